//! Where rows come from: `--data` names files, directories (every `.jsonl`/`.json`/`.parquet` file
//! below, in path order) or glob patterns (`data/train-*.parquet`). Each file is read lazily: JSONL
//! line by line, Parquet row group by row group; never a whole file in memory.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use minijinja::Value;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::value;

/// The format of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet (what Hugging Face datasets ship).
    Parquet,
}

/// A data file and its format.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// Path.
    pub path: PathBuf,
    /// Format, from the extension.
    pub format: Format,
}

fn format_of(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()? {
        "jsonl" | "json" | "ndjson" => Some(Format::Jsonl),
        "parquet" => Some(Format::Parquet),
        _ => None,
    }
}

/// Resolves `--data` specs to files, in order (each spec's files sorted by path).
pub fn resolve(specs: &[String]) -> Result<Vec<DataFile>> {
    let mut files = Vec::new();
    for spec in specs {
        let path = Path::new(spec);
        let mut found: Vec<PathBuf> = if path.is_file() {
            vec![path.to_path_buf()]
        } else if path.is_dir() {
            let mut v = Vec::new();
            walk(path, &mut v)?;
            v.retain(|p| format_of(p).is_some());
            if v.is_empty() {
                bail!("{spec}: the directory holds no .jsonl, .json or .parquet file");
            }
            v
        } else if spec.contains(['*', '?', '[']) {
            let v: Vec<PathBuf> = glob::glob(spec)
                .with_context(|| format!("{spec}: bad glob pattern"))?
                .filter_map(|r| r.ok())
                .filter(|p| p.is_file())
                .collect();
            if v.is_empty() {
                bail!("{spec}: the pattern matches no file");
            }
            v
        } else {
            bail!("{spec}: no such file or directory");
        };
        found.sort();
        for p in found {
            let format = format_of(&p).with_context(|| {
                format!(
                    "{}: unknown data format (expected .jsonl, .json or .parquet)",
                    p.display()
                )
            })?;
            files.push(DataFile { path: p, format });
        }
    }
    if files.is_empty() {
        bail!("no data file given");
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = entry?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// One row read from a file: where it is (for messages) and its content.
pub struct RawRow {
    /// `file:line N` or `file: row N`.
    pub location: String,
    /// The row's content.
    pub content: RawContent,
}

/// A row as read: JSON text (parsed by the caller, in parallel), a decoded Parquet record, or
/// why it is unreadable.
pub enum RawContent {
    /// One JSONL line.
    Json(String),
    /// A Parquet record.
    Value(Value),
    /// Unreadable.
    Error(String),
}

impl RawContent {
    /// The row as a template value.
    pub fn parse(self) -> Result<Value, String> {
        match self {
            Self::Json(text) => value::from_json(&text).map_err(|e| format!("malformed JSON: {e}")),
            Self::Value(v) => Ok(v),
            Self::Error(e) => Err(e),
        }
    }
}

/// Streams the rows of a file to `sink` in batches of up to `batch` rows; `sink` returns `false`
/// to stop early. The number of bytes read so far is passed along for progress.
pub fn read_rows(
    file: &DataFile,
    batch: usize,
    sink: &mut dyn FnMut(Vec<RawRow>, u64) -> Result<bool>,
) -> Result<()> {
    match file.format {
        Format::Jsonl => read_jsonl(&file.path, batch, sink),
        Format::Parquet => read_parquet(&file.path, batch, sink),
    }
}

/// Collects rows into batches for the sink.
struct Batcher<'a> {
    rows: Vec<RawRow>,
    batch: usize,
    sink: &'a mut dyn FnMut(Vec<RawRow>, u64) -> Result<bool>,
}

impl<'a> Batcher<'a> {
    fn new(batch: usize, sink: &'a mut dyn FnMut(Vec<RawRow>, u64) -> Result<bool>) -> Self {
        Self {
            rows: Vec::with_capacity(batch),
            batch,
            sink,
        }
    }

    /// Adds a row; `false` when the sink asked to stop.
    fn push(&mut self, row: RawRow, bytes: u64) -> Result<bool> {
        self.rows.push(row);
        if self.rows.len() < self.batch {
            return Ok(true);
        }
        (self.sink)(std::mem::take(&mut self.rows), bytes)
    }

    /// Hands over the last, partial batch.
    fn finish(self, bytes: u64) -> Result<()> {
        if !self.rows.is_empty() {
            (self.sink)(self.rows, bytes)?;
        }
        Ok(())
    }
}

fn read_jsonl(
    path: &Path,
    batch: usize,
    sink: &mut dyn FnMut(Vec<RawRow>, u64) -> Result<bool>,
) -> Result<()> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let mut line = Vec::new();
    let (mut line_no, mut bytes) = (0usize, 0u64);
    let mut rows = Batcher::new(batch, sink);
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("{}: read error after line {line_no}", path.display()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        bytes += n as u64;
        let location = format!("{}:{line_no}", path.display());
        let content = match std::str::from_utf8(&line) {
            Ok(t) if t.trim().is_empty() => continue,
            Ok(t) => RawContent::Json(t.trim().to_string()),
            Err(e) => RawContent::Error(format!("not UTF-8 ({e})")),
        };
        if !rows.push(RawRow { location, content }, bytes)? {
            return Ok(());
        }
    }
    rows.finish(bytes)
}

/// The top-level columns of a Parquet file must name a row kind.
fn check_columns(path: &Path, names: &[String]) -> Result<()> {
    let has = |n: &str| names.iter().any(|c| c == n);
    if has("messages") || has("text") || (has("prompt") && has("completion")) {
        return Ok(());
    }
    bail!(
        "{}: the Parquet file's columns ({}) include none of `messages`, `prompt` + `completion`, `text`",
        path.display(),
        names.join(", ")
    )
}

fn read_parquet(
    path: &Path,
    batch: usize,
    sink: &mut dyn FnMut(Vec<RawRow>, u64) -> Result<bool>,
) -> Result<()> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = SerializedFileReader::new(f)
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    let meta = reader.metadata();
    let names: Vec<String> = meta
        .file_metadata()
        .schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    check_columns(path, &names)?;
    let mut row_no = 0usize;
    let mut bytes = 0u64;
    let mut rows = Batcher::new(batch, sink);
    for g in 0..meta.num_row_groups() {
        bytes += meta.row_group(g).compressed_size() as u64;
        let group = reader
            .get_row_group(g)
            .with_context(|| format!("{}: row group {g}", path.display()))?;
        let iter = group
            .get_row_iter(None)
            .with_context(|| format!("{}: row group {g}", path.display()))?;
        for row in iter {
            let location = format!("{}: row {row_no}", path.display());
            row_no += 1;
            let content = match row {
                Ok(r) => RawContent::Value(value::from_parquet_row(&r)),
                Err(e) => RawContent::Error(format!("unreadable Parquet row: {e}")),
            };
            if !rows.push(RawRow { location, content }, bytes)? {
                return Ok(());
            }
        }
    }
    rows.finish(bytes)
}

/// Total bytes of the files (for the progress bar).
pub fn total_bytes(files: &[DataFile]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(&f.path).ok())
        .map(|m| m.len())
        .sum()
}
