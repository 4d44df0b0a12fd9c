//! Check results: a status, what was found, the fix; text and JSON.

use crate::*;

// ---------------------------------------------------------------------------
// Results and output

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Pass,
    Info,
    Warn,
    Fail,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Info => "INFO",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: &'static str,
    pub status: Status,
    /// What was found on this host.
    pub found: String,
    /// The fix: a command or a setting. Empty when nothing is to be done.
    pub fix: String,
}

impl CheckResult {
    pub(crate) fn new(name: &'static str, status: Status, found: impl Into<String>) -> Self {
        CheckResult {
            name,
            status,
            found: found.into(),
            fix: String::new(),
        }
    }

    pub(crate) fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }

    /// The one-line text form.
    pub fn line(&self) -> String {
        let mut s = format!("{}  {:<16} {}", self.status.as_str(), self.name, self.found);
        if !self.fix.is_empty() {
            let _ = write!(s, "  => fix: {}", self.fix);
        }
        s
    }
}

pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `[{"check": .., "status": .., "found": .., "fix": ..}, ...]`
pub fn to_json(results: &[CheckResult]) -> String {
    let items: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "  {{\"check\": {}, \"status\": {}, \"found\": {}, \"fix\": {}}}",
                json_str(r.name),
                json_str(r.status.as_str()),
                json_str(&r.found),
                json_str(&r.fix)
            )
        })
        .collect();
    if items.is_empty() {
        "[]".into()
    } else {
        format!("[\n{}\n]", items.join(",\n"))
    }
}
