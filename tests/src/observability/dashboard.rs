//! The Grafana dashboard as data: its panels, every PromQL expression in them, its template
//! variables, and Grafana-style `$variable` interpolation.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

/// A dashboard JSON model.
pub struct Dashboard {
    /// The whole JSON model, as Grafana exports and provisions it.
    pub json: Value,
}

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// Title of the panel it belongs to.
    pub panel: String,
    /// Panel type (`timeseries`, `stat`, `heatmap`, ...).
    pub panel_type: String,
    /// The target's `refId`.
    pub ref_id: String,
    /// The PromQL expression, variables not interpolated.
    pub expr: String,
}

/// One template variable.
#[derive(Debug, Clone)]
pub struct Variable {
    /// Its name (`$name` in queries).
    pub name: String,
    /// `query`, `textbox`, `datasource`, `custom`, ...
    pub kind: String,
    /// Its query (for `query` variables, e.g. `label_values(up, instance)`), or default value.
    pub query: String,
}

impl Dashboard {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        Dashboard { json }
    }

    /// Every panel, rows' nested panels included (rows themselves too).
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for panel in panels.as_array().into_iter().flatten() {
                out.push(panel);
                walk(&panel["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    /// Every target expression of every panel.
    pub fn queries(&self) -> Vec<PanelQuery> {
        self.panels()
            .into_iter()
            .flat_map(|panel| {
                panel["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |target| PanelQuery {
                        panel: text(&panel["title"]),
                        panel_type: text(&panel["type"]),
                        ref_id: text(&target["refId"]),
                        expr: text(&target["expr"]),
                    })
            })
            .collect()
    }

    /// The template variables.
    pub fn variables(&self) -> Vec<Variable> {
        self.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| Variable {
                name: text(&v["name"]),
                kind: text(&v["type"]),
                // Grafana ≥ 10 may store a variable query as an object with a `query` field.
                query: match &v["query"] {
                    Value::Object(object) => text(&object["query"]),
                    other => text(other),
                },
            })
            .collect()
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Replaces `$name`, `${name}` and `${name:format}` by `values[name]`, like Grafana does before
/// sending a query (the format is ignored: values here are used as given). A variable without a
/// value is an error naming it, so no `$` reaches Prometheus unnoticed.
pub fn interpolate(expr: &str, values: &HashMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {expr:?}"))?;
            let inner = &braced[..end];
            (inner.split(':').next().unwrap_or_default(), end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = values
            .get(name)
            .ok_or_else(|| format!("no value for variable ${name} in {expr:?}"))?;
        out.push_str(value);
        rest = &after[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Splits Grafana's `label_values(selector, label)` into (selector, label).
pub fn parse_label_values(query: &str) -> Option<(&str, &str)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim(), label.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_replaces_every_form_and_rejects_unknown_variables() {
        let values = HashMap::from([
            ("module", ".*".to_owned()),
            ("__rate_interval", "30s".to_owned()),
        ]);
        assert_eq!(
            interpolate(
                r#"rate(x{module=~"$module", m=~"${module:regex}"}[$__rate_interval])"#,
                &values
            )
            .unwrap(),
            r#"rate(x{module=~".*", m=~".*"}[30s])"#
        );
        assert!(interpolate("x{a=\"$nope\"}", &values)
            .unwrap_err()
            .contains("$nope"));
    }

    #[test]
    fn label_values_queries_split_into_selector_and_label() {
        assert_eq!(
            parse_label_values(r#"label_values(up{job="w", a=~"b,c"}, instance)"#),
            Some((r#"up{job="w", a=~"b,c"}"#, "instance"))
        );
        assert_eq!(parse_label_values("query_result(up)"), None);
    }
}
