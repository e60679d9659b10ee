//! The table of figures and targets a bench prints at the end, and its notes.

use super::percentile;
use super::runs::ColdStart;

/// Rows of figure, value, target and verdict under a title, then notes.
pub struct Report {
    title: String,
    rows: Vec<(String, String, String, String)>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(title: String) -> Self {
        Self {
            title,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn section(&mut self, title: &str) {
        self.rows.push((
            format!("[{title}]"),
            String::new(),
            String::new(),
            String::new(),
        ));
    }

    pub fn row(&mut self, figure: &str, value: String) {
        self.rows
            .push((figure.into(), value, String::new(), String::new()));
    }

    pub fn check(&mut self, figure: &str, value: String, target: &str, ok: bool) {
        self.rows.push((
            figure.into(),
            value,
            target.into(),
            if ok { "ok" } else { "MISSED" }.into(),
        ));
    }

    /// A figure with a target that other objects may have polluted: judged only when
    /// `clean`.
    pub fn check_if(&mut self, figure: &str, value: String, target: &str, ok: bool, clean: bool) {
        if clean {
            self.check(figure, value, target, ok);
        } else {
            self.rows.push((
                figure.into(),
                value,
                target.into(),
                "(incl. other objects)".into(),
            ));
        }
    }

    /// The cold start's first rows: the time from the operator's start until all `count`
    /// were Ready, against `target` seconds, and the first Ready.
    pub fn ready_rows(&mut self, count: usize, cold_start: &ColdStart, target: f64) {
        self.check(
            &format!("operator start -> all {count} Ready=True"),
            cold_start.describe(),
            &format!("<= {target:.0} s"),
            cold_start
                .ready_at
                .is_some_and(|d| d.as_secs_f64() <= target),
        );
        self.row(
            "first object Ready (startup cost)",
            format!("{:.2} s", percentile(&cold_start.latencies, 0.0)),
        );
    }

    /// A note of the resources not Ready at the end of `run`, if any.
    pub fn not_ready(&mut self, run: &ColdStart, what: &str) {
        if !run.not_ready.is_empty() {
            let reasons = &run.not_ready;
            self.notes
                .push(format!("not Ready at the end of {what}: {reasons:?}"));
        }
    }

    pub fn print(&self) {
        let w0 = self
            .rows
            .iter()
            .filter(|r| !r.1.is_empty())
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0);
        let w1 = self
            .rows
            .iter()
            .map(|r| r.1.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let w2 = self
            .rows
            .iter()
            .map(|r| r.2.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let line = "-".repeat(w0 + w1 + w2 + 14);
        println!();
        println!("{}", self.title);
        println!("{line}");
        println!("{:<w0$}  {:>w1$}  {:<w2$}", "figure", "value", "target");
        println!("{line}");
        for (figure, value, target, verdict) in &self.rows {
            if value.is_empty() && target.is_empty() {
                println!("{figure}");
            } else {
                println!("{figure:<w0$}  {value:>w1$}  {target:<w2$}  {verdict}");
            }
        }
        println!("{line}");
        for note in &self.notes {
            println!("- {note}");
        }
    }
}

/// The value, or `?` when it could not be measured.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("?".to_string(), |v| v.to_string())
}
