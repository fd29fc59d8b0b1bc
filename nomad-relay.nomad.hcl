# nomad-relay as a Nomad service job: nomad job run nomad-relay.nomad.hcl
#
# Before the first run:
#
# 1. Every client that may run the relay declares the host volume in its agent configuration
#    (the directory must exist and be writable by uid 10001, the image's user):
#
#      client {
#        host_volume "nomad-relay-data" {
#          path      = "/opt/nomad-relay"
#          read_only = false
#        }
#      }
#
# 2. With ACLs enabled, the relay authenticates with its workload identity (identity { env =
#    true } below puts it in NOMAD_TOKEN, which the relay reads). Attach a policy to the job
#    that can read every topic the relay subscribes to by default (Job, Allocation,
#    Evaluation, Deployment, Service, CSIPlugin: read-job; CSIVolume: csi-read-volume;
#    HostVolume: host-volume-read; Node: node read). namespace "*" also lets the relay list
#    namespaces, so a new namespace is followed without a restart. Save as policy.hcl:
#
#      namespace "*" {
#        capabilities = ["read-job", "csi-read-volume", "host-volume-read"]
#      }
#      node {
#        policy = "read"
#      }
#
#    and apply it to this job's identity:
#
#      nomad acl policy apply -namespace default -job nomad-relay nomad-relay-events policy.hcl

job "nomad-relay" {
  type = "service"

  group "relay" {
    # Exactly one: the relay locks its data_dir, and its journal and cursors are what keep
    # events from being lost or repeated across restarts.
    count = 1

    volume "data" {
      type      = "host"
      source    = "nomad-relay-data"
      read_only = false
    }

    network {
      # The docker driver publishes this port on one host address only: the one Nomad
      # allocated it on (NOMAD_IP_http, from the client's network_interface), which is where
      # the Nomad client runs the check below from. To keep /metrics off a public interface,
      # give the port a `host_network` the client defines on a private network.
      port "http" {
        static = 8686
      }
    }

    service {
      name     = "nomad-relay"
      provider = "nomad"
      port     = "http"

      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "relay" {
      driver = "docker"

      config {
        image = "ghcr.io/nomad-relay/nomad-relay:0.1.0"
        # NOMAD_TASK_DIR is /local inside the container, where the template below writes.
        args  = ["run", "--config", "${NOMAD_TASK_DIR}/relay.toml"]
        ports = ["http"]
      }

      # NOMAD_TOKEN = this task's workload identity; see the ACL policy at the top.
      identity {
        env = true
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/nomad-relay"
        read_only   = false
      }

      template {
        destination = "local/relay.toml"
        change_mode = "restart"
        data        = <<-EOF
          # Every key: config.example.toml in the nomad-relay repository.
          data_dir = "/var/lib/nomad-relay"
          # Shorter than kill_timeout below (which Nomad clients cap at max_kill_timeout,
          # 30 s by default), so a stop lets the sinks finish and save their cursors.
          shutdown_timeout = "20s"

          # 0.0.0.0 here is the container's own private interface, not the host's: Docker
          # forwards the published host address above to it. Under raw_exec or exec, where
          # the task shares the host's network, listen on the NOMAD_ADDR_http variable's
          # address instead (a template `env` call).
          [http]
          listen = "0.0.0.0:8686"

          # This client's own agent (use https:// and [nomad.tls] if the cluster uses TLS).
          [nomad]
          address = "http://{{ env "attr.unique.network.ip-address" }}:4646"
          # Every namespace. Nomad puts the job's own namespace in NOMAD_NAMESPACE in every
          # task, which the relay (like Nomad's CLI) would otherwise follow alone.
          namespace = "*"

          # Placeholder sink: replace it with your real sinks (type = "kafka", "nats" or
          # "amqp"; see config.example.toml) before relying on this job.
          [sinks.events_file]
          type = "file"
          path = "/var/lib/nomad-relay/events.ndjson"
        EOF
      }

      # Longer than the relay's shutdown_timeout (20 s in the template), so a stop lets it
      # finish the batches in flight and save its cursors instead of being killed. Nomad
      # clients cap this at their max_kill_timeout (30 s by default).
      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
