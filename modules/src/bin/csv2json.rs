//! `csv2json`: summarises a CSV table as one line of JSON.
//!
//! A realistic "parse, aggregate, serialise" workload. Input is RFC 4180 CSV
//! with a header row (quoted fields, doubled quotes, commas and newlines inside
//! quotes). Output is `{"rows":N,"columns":[...]}`, one entry per header
//! column, in order:
//!
//! * `{"name":..,"type":"number","count":N,"min":..,"max":..,"sum":..,"mean":..}`
//!   when every non-empty value parses as a finite `f64` (NaN and infinity
//!   have no JSON form, so they make the column a string column); `min`, `max`
//!   and `mean` are `null` when the column has no values at all;
//! * `{"name":..,"type":"string","count":N,"distinct":K}` otherwise.
//!
//! Empty values are not counted; values are not trimmed. Malformed input (a
//! row with a different number of fields, invalid UTF-8, ...) is reported on
//! stderr with exit code 2.

use serde::Serialize;
use std::collections::HashSet;
use std::io::{self, Write};
use std::process::ExitCode;

#[derive(Serialize)]
struct Report {
    rows: u64,
    columns: Vec<ColumnReport>,
}

#[derive(Serialize)]
struct ColumnReport {
    name: String,
    #[serde(flatten)]
    stats: Stats,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Stats {
    Number {
        count: u64,
        min: Option<f64>,
        max: Option<f64>,
        sum: f64,
        mean: Option<f64>,
    },
    String {
        count: u64,
        distinct: usize,
    },
}

/// Running statistics for one column.
struct Column {
    name: String,
    count: u64,
    /// Whether every value so far was a number; once false the numeric fields are stale.
    numeric: bool,
    min: f64,
    max: f64,
    sum: f64,
    /// Kept for every column: only the end of input tells whether a column is numeric.
    distinct: HashSet<String>,
}

impl Column {
    fn new(name: &str) -> Self {
        Column {
            name: name.to_owned(),
            count: 0,
            numeric: true,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            distinct: HashSet::new(),
        }
    }

    fn add(&mut self, value: &str) {
        if value.is_empty() {
            return;
        }
        self.count += 1;
        if self.numeric {
            match value.parse::<f64>() {
                Ok(x) if x.is_finite() => {
                    self.min = self.min.min(x);
                    self.max = self.max.max(x);
                    self.sum += x;
                }
                _ => self.numeric = false,
            }
        }
        if !self.distinct.contains(value) {
            self.distinct.insert(value.to_owned());
        }
    }

    fn report(self) -> ColumnReport {
        let any = self.count > 0;
        let stats = if self.numeric {
            Stats::Number {
                count: self.count,
                min: any.then_some(self.min),
                max: any.then_some(self.max),
                sum: self.sum,
                mean: any.then(|| self.sum / self.count as f64),
            }
        } else {
            Stats::String {
                count: self.count,
                distinct: self.distinct.len(),
            }
        };
        ColumnReport {
            name: self.name,
            stats,
        }
    }
}

fn summarise(input: impl io::Read) -> Result<Report, csv::Error> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(input);
    let mut columns: Vec<Column> = reader.headers()?.iter().map(Column::new).collect();
    let mut rows = 0u64;
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record)? {
        rows += 1;
        for (column, value) in columns.iter_mut().zip(record.iter()) {
            column.add(value);
        }
    }
    Ok(Report {
        rows,
        columns: columns.into_iter().map(Column::report).collect(),
    })
}

fn main() -> ExitCode {
    let report = match summarise(io::stdin().lock()) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("csv2json: malformed CSV: {err}");
            return ExitCode::from(2);
        }
    };
    let mut output = io::stdout().lock();
    let written = serde_json::to_writer(&mut output, &report)
        .map_err(io::Error::from)
        .and_then(|()| writeln!(output));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("csv2json: writing the summary: {err}");
            ExitCode::FAILURE
        }
    }
}
