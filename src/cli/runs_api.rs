//! `dag-operator runs` through the operator's HTTP API (`--server`, `DAGOP_SERVER`): no
//! database credentials, the caller's own right to read the namespace. The API lists runs per
//! DAG (`GET …/dags/{name}/runs`, newest first, paged); without a DAG name every DAG of the
//! namespace is asked and the pages merged. A state filter is applied here, paging on until
//! `--limit` runs match or the DAG has no more.

use hyper::Method;
use serde_json::Value;

use dag_operator::graph::TaskState;

use super::runs::{Line, summary_of, table, time};
use super::server::Server;
use super::{CliError, OutputFormat, RunsArgs};

/// The most runs the API gives in one page.
const PAGE: u32 = 500;

pub fn run(args: &RunsArgs) -> Result<(), CliError> {
    if let Some(s) = &args.state {
        if dag_operator::store::RunState::parse(s).is_none() {
            return Err(CliError::usage(format!(
                "invalid --state {s:?}: expected one of running, success, failed, cancelled"
            )));
        }
    }
    let items = super::act::runtime()?.block_on(async {
        let server = Server::connect(&args.server, args.namespace.as_deref()).await?;
        let ns = server.namespace.clone();
        let dags = match &args.name {
            Some(name) => vec![name.clone()],
            None => dag_names(&server, &ns).await?,
        };
        let mut items = Vec::new();
        for dag in dags {
            items.extend(runs_of(&server, &ns, &dag, args).await?);
        }
        Ok::<_, CliError>(newest(items, args.limit))
    })?;
    let out = match args.output {
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(&items)
                .map_err(|e| CliError::runtime(format!("cannot render JSON: {e}")))?;
            text.push('\n');
            text
        }
        OutputFormat::Yaml => serde_yaml::to_string(&items)
            .map_err(|e| CliError::runtime(format!("cannot render YAML: {e}")))?,
        OutputFormat::Name => items
            .iter()
            .map(|r| format!("run/{}\n", r["id"].as_str().unwrap_or_default()))
            .collect(),
        OutputFormat::Table | OutputFormat::Wide if items.is_empty() => {
            eprintln!("No runs found.");
            String::new()
        }
        OutputFormat::Table | OutputFormat::Wide => {
            let lines: Vec<Line> = items.iter().map(line).collect();
            table(&lines, args.output == OutputFormat::Wide)
        }
    };
    print!("{out}");
    Ok(())
}

/// The names of the namespace's DAGs, following the list's pages (`metadata.continue`).
async fn dag_names(server: &Server, ns: &str) -> Result<Vec<String>, CliError> {
    let mut names = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(token) => format!(
                "/api/v1/namespaces/{ns}/dags?continue={}",
                super::connection::percent_encode(token)
            ),
            None => format!("/api/v1/namespaces/{ns}/dags"),
        };
        let list = server.send(Method::GET, &path, None).await?.ok()?.json()?;
        names.extend(
            list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["name"].as_str().map(str::to_string)),
        );
        next = list["metadata"]["continue"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        if next.is_none() {
            return Ok(names);
        }
    }
}

/// Up to `--limit` runs of one DAG in `--state`, newest first.
async fn runs_of(
    server: &Server,
    ns: &str,
    dag: &str,
    args: &RunsArgs,
) -> Result<Vec<Value>, CliError> {
    let want = args.limit as usize;
    let page = args.limit.clamp(1, PAGE);
    let mut found = Vec::new();
    let mut before: Option<String> = None;
    while found.len() < want {
        let mut path = format!("/api/v1/namespaces/{ns}/dags/{dag}/runs?limit={page}");
        if let Some(b) = &before {
            path.push_str(&format!("&before={}", query_escape(b)));
        }
        let list = server.send(Method::GET, &path, None).await?.ok()?.json()?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        found.extend(
            items
                .into_iter()
                .filter(|r| wanted(r, args.state.as_deref())),
        );
        match list["next"].as_str() {
            Some(next) => before = Some(next.to_string()),
            None => break,
        }
    }
    found.truncate(want);
    Ok(found)
}

fn wanted(run: &Value, state: Option<&str>) -> bool {
    state.is_none_or(|s| run["state"] == s)
}

/// A timestamp as a query value (`+` would be read as a space).
fn query_escape(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

/// The newest `limit` runs of several DAGs, newest logical date first.
fn newest(mut items: Vec<Value>, limit: u32) -> Vec<Value> {
    items.sort_by(|a, b| {
        let date = |r: &Value| {
            r["logicalDate"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        date(b).cmp(&date(a))
    });
    items.truncate(limit as usize);
    items
}

/// A run of the API as a line of the table.
fn line(r: &Value) -> Line {
    let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    let at = |v: &Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| time(t.with_timezone(&chrono::Utc)))
            .unwrap_or_else(|| "-".into())
    };
    let states = r["tasks"]
        .as_array()
        .map(|tasks| {
            tasks
                .iter()
                .filter_map(|t| t["state"].as_str().and_then(TaskState::parse))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Line {
        cells: [
            text(&r["namespace"]),
            text(&r["dag"]),
            text(&r["id"]),
            text(&r["type"]),
            at(&r["logicalDate"]),
            text(&r["state"]),
            at(&r["startedAt"]),
            at(&r["endedAt"]),
            summary_of(states),
        ],
        wide: [
            r["attempt"]
                .as_i64()
                .map_or_else(|| "-".into(), |a| a.to_string()),
            // the API does not show a run's priority
            "-".into(),
            text(&r["backfill"]),
            r["specVersion"]
                .as_str()
                .map(|h| h.chars().take(12).collect())
                .unwrap_or_else(|| "-".into()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runs_of_several_dags_merge_newest_first() {
        let runs = vec![
            json!({"id": "a", "logicalDate": "2024-01-01T00:00:00+00:00"}),
            json!({"id": "b", "logicalDate": "2024-03-01T00:00:00+00:00"}),
            json!({"id": "c", "logicalDate": "2024-02-01T00:00:00+00:00"}),
        ];
        let ids: Vec<Value> = newest(runs, 2)
            .into_iter()
            .map(|r| r["id"].clone())
            .collect();
        assert_eq!(ids, vec![json!("b"), json!("c")]);
    }

    #[test]
    fn an_api_run_as_a_table_line() {
        let run = json!({
            "id": "r1", "namespace": "ns", "dag": "etl", "type": "manual",
            "logicalDate": "2024-03-01T00:00:00+00:00", "state": "running",
            "startedAt": "2024-03-01T00:00:05.5+00:00", "endedAt": null, "attempt": 1,
            "backfill": null, "specVersion": "0123456789abcdef",
            "tasks": [{"state": "success"}, {"state": "running"}],
        });
        let l = line(&run);
        assert_eq!(l.cells[4], "2024-03-01T00:00:00Z");
        assert_eq!(l.cells[6], "2024-03-01T00:00:05Z");
        assert_eq!(l.cells[7], "-");
        assert_eq!(l.cells[8], "running=1 success=1");
        assert_eq!(l.wide[3], "0123456789ab");
        assert!(wanted(&run, Some("running")) && !wanted(&run, Some("failed")));
        assert_eq!(
            query_escape("2024-03-01T00:00:00+00:00"),
            "2024-03-01T00%3A00%3A00%2B00%3A00"
        );
    }
}
