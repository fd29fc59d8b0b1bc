//! What ACL each event-stream topic needs, so that a refused subscription can be explained
//! in terms an operator can paste into a Nomad ACL policy.

/// The capability Nomad checks for a topic (from Nomad's `validateNsOp`).
pub fn required_acl(topic: &str) -> &'static str {
    match topic {
        "Job" | "Allocation" | "Evaluation" | "Deployment" | "Service" | "CSIPlugin" => {
            "namespace capability `read-job`"
        }
        "CSIVolume" => "namespace capability `csi-read-volume`",
        "HostVolume" => "namespace capability `host-volume-read`",
        "Variable" => "namespace variable `list` access on the paths (Nomad 2.0+)",
        "Node" => "`node { policy = \"read\" }`",
        "Operator" => "`operator { policy = \"read\" }` (Enterprise)",
        _ => "a management token",
    }
}

/// A sentence listing each subscribed topic's requirement, grouped by requirement.
pub fn explain(topics: &[String], namespace: &str) -> String {
    let mut groups: Vec<(&'static str, Vec<&str>)> = Vec::new();
    for topic in topics {
        let name = topic.split(':').next().unwrap_or(topic);
        let acl = required_acl(name);
        match groups.iter_mut().find(|(existing, _)| *existing == acl) {
            Some((_, names)) => {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            None => groups.push((acl, vec![name])),
        }
    }
    let scope = if namespace == "*" {
        "in every namespace (namespace = \"*\")".to_owned()
    } else {
        format!("in namespace `{namespace}`")
    };
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(acl, names)| {
            let scoped = if acl.starts_with("namespace") { format!("{acl} {scope}") } else { acl.to_owned() };
            format!("{} need {scoped}", names.join(", "))
        })
        .collect();
    format!("the token's policy must grant: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_each_topic_group() {
        let topics: Vec<String> = ["Job", "Allocation", "Node", "NodePool", "CSIVolume:vol1"]
            .iter()
            .map(|t| t.to_string())
            .collect();
        let text = explain(&topics, "*");
        assert!(
            text.contains("Job, Allocation need namespace capability `read-job` in every namespace"),
            "{text}"
        );
        assert!(text.contains("Node need `node { policy = \"read\" }`"), "{text}");
        assert!(text.contains("NodePool need a management token"), "{text}");
        assert!(text.contains("CSIVolume need namespace capability `csi-read-volume`"), "{text}");
    }
}
