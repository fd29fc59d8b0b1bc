//! Figures and how they are shown: a Markdown table on stdout, per group (a sink or a
//! component), and the same figures as JSON.

use std::path::Path;

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured: a sink's name, `parse`, `journal`, `disk`, `backlog`.
    pub group: String,
    /// The figure's name.
    pub name: &'static str,
    /// Its value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
}

/// Figures of one group.
pub struct Group {
    name: String,
    /// The figures so far.
    pub figures: Vec<Figure>,
}

impl Group {
    /// An empty group.
    pub fn new(name: &str) -> Group {
        Group { name: name.to_owned(), figures: Vec::new() }
    }

    /// Adds a figure.
    pub fn add(&mut self, name: &'static str, value: f64, unit: &'static str) {
        self.figures.push(Figure { group: self.name.clone(), name, value, unit });
    }
}

/// The figures as a Markdown table.
pub fn table(figures: &[Figure]) -> String {
    let mut out = String::from("| group | figure | value | unit |\n|---|---|---:|---|\n");
    for figure in figures {
        let value = if figure.value.abs() >= 100.0 || figure.value == figure.value.trunc() {
            format!("{:.0}", figure.value)
        } else {
            format!("{:.2}", figure.value)
        };
        out.push_str(&format!("| {} | {} | {value} | {} |\n", figure.group, figure.name, figure.unit));
    }
    out
}

/// One line per sink with the headline figures, where they were measured.
pub fn summary(figures: &[Figure]) -> String {
    let columns: [(&str, &str); 13] = [
        ("relay_events_per_s", "relay ev/s"),
        ("raw_client_events_per_s", "raw client ev/s"),
        ("ratio_to_raw_client", "ratio"),
        ("from_journal_events_per_s", "from journal ev/s"),
        ("from_journal_ratio_to_raw_client", "ratio"),
        ("relay_mb_per_s", "MB/s"),
        ("p50_ms_at_1000", "p50 ms @1k"),
        ("p99_ms_at_1000", "p99 ms @1k"),
        ("p99_9_ms_at_1000", "p99.9 ms @1k"),
        ("raw_client_p99_ms_at_1000", "raw client p99 ms @1k"),
        ("p99_ms_at_10000", "p99 ms @10k"),
        ("steady_rss_mib_at_10000", "steady RSS MiB @10k"),
        ("cpu_s_per_million_events", "CPU s / M events"),
    ];
    let mut groups: Vec<&str> = Vec::new();
    for figure in figures {
        if !groups.contains(&figure.group.as_str()) {
            groups.push(&figure.group);
        }
    }
    let mut out = String::from("| sink |");
    for (_, title) in &columns {
        out.push_str(&format!(" {title} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(columns.len()));
    out.push('\n');
    let mut rows = 0;
    for group in groups {
        let find = |name: &str| figures.iter().find(|f| f.group == group && f.name == name).map(|f| f.value);
        if find("relay_events_per_s").is_none() && find("p99_ms_at_1000").is_none() {
            continue;
        }
        rows += 1;
        out.push_str(&format!("| {group} |"));
        for (name, _) in &columns {
            match find(name) {
                Some(value) if value >= 100.0 => out.push_str(&format!(" {value:.0} |")),
                Some(value) => out.push_str(&format!(" {value:.2} |")),
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    if rows == 0 { String::new() } else { out }
}

/// Writes the figures as `{"figures":[{"group":..,"name":..,"value":..,"unit":..}],...}`.
pub fn write_json(path: &Path, figures: &[Figure], command: &str) -> std::io::Result<()> {
    let list: Vec<serde_json::Value> = figures
        .iter()
        .map(|f| serde_json::json!({ "group": f.group, "name": f.name, "value": f.value, "unit": f.unit }))
        .collect();
    let machine = serde_json::json!({
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    });
    let document = serde_json::json!({ "command": command, "machine": machine, "figures": list });
    std::fs::write(path, serde_json::to_string_pretty(&document)? + "\n")
}
