//! Results: the JSON record of a run, the tables for people, the SVG
//! timeline.

pub mod plot;
pub mod summary;
pub mod table;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::run::RunResult;

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Report {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The files of one run in `dir`: `<scenario>-<vmm>.json`, `.svg`, `.txt`.
pub fn write_run(dir: &Path, r: &RunResult) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let stem = format!("{}-{}", r.scenario.name, r.vmm.label());
    let json = dir.join(format!("{stem}.json"));
    let svg = dir.join(format!("{stem}.svg"));
    let txt = dir.join(format!("{stem}.txt"));
    write_json(&json, r)?;
    plot::render(&svg, &[r])?;
    std::fs::write(&txt, summary::detail(r))
        .map_err(|e| Error::io(format!("writing {}", txt.display()), e))?;
    Ok(vec![json, svg, txt])
}
