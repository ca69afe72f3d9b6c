//! Plain-text tables for people: a header row, aligned columns (numbers to
//! the right), and number formatting shared by every report.

/// A table being built.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Left-align numbers too (two-column "key  value" tables).
    plain: bool,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
            plain: false,
        }
    }

    /// A table whose cells are all left-aligned and that has no header.
    pub fn key_value() -> Table {
        Table {
            plain: true,
            ..Table::default()
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, two spaces between columns.
    pub fn render(&self) -> String {
        let cols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let cell = |row: &Vec<String>, c: usize| row.get(c).cloned().unwrap_or_default();
        let width = |c: usize| {
            self.rows
                .iter()
                .chain([&self.headers])
                .map(|r| cell(r, c).chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let numeric = |s: &str| {
            let t = s.trim_end_matches(['%', 'x', 's']);
            !t.is_empty() && (t.parse::<f64>().is_ok() || t == "-")
        };
        let line = |row: &Vec<String>| {
            let mut out = String::new();
            for (c, w) in widths.iter().enumerate() {
                let s = cell(row, c);
                let pad = w.saturating_sub(s.chars().count());
                if c > 0 {
                    out.push_str("  ");
                }
                if c > 0 && !self.plain && numeric(&s) {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(&s);
                } else {
                    out.push_str(&s);
                    out.push_str(&" ".repeat(pad));
                }
            }
            out.trim_end().to_string()
        };
        let mut out = String::new();
        if !self.headers.is_empty() {
            out.push_str(&line(&self.headers));
            out.push('\n');
            out.push_str(
                &widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  "),
            );
            out.push('\n');
        }
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }
}

/// `v` with `decimals` decimals, or `-`.
pub fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".into(),
    }
}

/// Bytes as MiB with one decimal, or `-`.
pub fn mib(bytes: Option<u64>) -> String {
    num(bytes.map(|b| b as f64 / 1048576.0), 1)
}

/// `a / b` as a ratio like `0.42x`, or `-` when either is missing or b is 0.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => {
            format!("{:.2}x", a / b)
        }
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_numbers_go_right() {
        let mut t = Table::new(["vmm", "total s"]);
        t.row(["tern", "1.5"]);
        t.row(["qemu-autoconverge", "12.25"]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "vmm                total s");
        assert_eq!(lines[2], "tern                   1.5");
        assert_eq!(lines[3], "qemu-autoconverge    12.25");
        assert_eq!(num(None, 1), "-");
        assert_eq!(mib(Some(3 << 20)), "3.0");
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25x");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "-");
    }
}
