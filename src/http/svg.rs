//! Pictures drawn on the server as inline SVG (issue 29): no script, no framework, nothing
//! fetched — the page is complete as sent, and the Content Security Policy needs no change.
//! The task graph of a DAG, laid out by `layout.rs`: a box per task coloured by its state in
//! the selected run (its border), the state also written in the box (never colour alone), the trigger rule
//! when it is not the default, arrows from upstream to downstream, each box a link to the
//! task's tries.

use maud::{Markup, html};

use super::directory::TaskSummary;
use super::layout::{BOX_HEIGHT, BOX_WIDTH, Edge, layout};
use crate::graph::TaskState;

/// What the graph shows of one task in the selected run.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskMark {
    pub state: Option<TaskState>,
    /// where its box links (the run page's section of the task), if there is a run
    pub link: Option<String>,
}

/// The task graph as inline SVG; `mark(name)` gives each task's state and link.
pub fn task_graph(tasks: &[TaskSummary], mark: impl Fn(&str) -> TaskMark) -> Markup {
    let input: Vec<(&str, Vec<&str>)> = tasks
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let l = layout(&input);
    html! {
        svg.graph xmlns="http://www.w3.org/2000/svg" role="img"
            aria-label=(format!("task graph: {} tasks, {} edges", tasks.len(), l.edges.len()))
            width=(l.width) height=(l.height) viewBox=(format!("0 0 {} {}", l.width, l.height)) {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"
                    markerHeight="7" orient="auto-start-reverse" {
                    path d="M0,0 L10,5 L0,10 z" fill="#555" {}
                }
            }
            @for e in &l.edges {
                path.edge d=(edge_path(e)) fill="none" stroke="#555" stroke-width="1.5"
                    marker-end="url(#arrow)" {}
            }
            @for (t, b) in tasks.iter().zip(&l.boxes) {
                @let m = mark(&t.name);
                @let st = m.state.map(TaskState::as_str).unwrap_or("none");
                @let node = html! {
                    g.task data-task=(t.name) data-state=(st) {
                        title { (t.name) " · " (st) @if let Some(r) = &t.trigger_rule { " · " (r) } }
                        rect x=(b.x) y=(b.y) width=(BOX_WIDTH) height=(BOX_HEIGHT) rx="6"
                            fill="#fff" stroke=(super::ui::task_colour(m.state)) stroke-width="3" {}
                        text x=(b.x + 8.0) y=(b.y + 18.0) font-weight="bold" { (short(&t.name, 20)) }
                        text x=(b.x + 8.0) y=(b.y + 35.0) font-size="11" {
                            (state_mark(m.state)) " " (st)
                            @if let Some(r) = &t.trigger_rule { " · " (short(r, 14)) }
                        }
                    }
                };
                @match &m.link {
                    Some(href) => a href=(href) { (node) },
                    None => (node),
                }
            }
        }
    }
}

/// A symbol per state, so a state reads without its colour.
pub fn state_mark(state: Option<TaskState>) -> &'static str {
    match state {
        Some(TaskState::Success) => "✓",
        Some(TaskState::Failed) => "✗",
        Some(TaskState::Running) => "▶",
        Some(TaskState::Queued) => "…",
        Some(TaskState::UpForRetry) => "↻",
        Some(TaskState::UpstreamFailed) => "⚠",
        Some(TaskState::Skipped) => "↷",
        Some(TaskState::Cancelled) => "■",
        Some(TaskState::Pending) | None => "○",
    }
}

/// `s`, cut to `n` characters with an ellipsis.
fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut cut: String = s.chars().take(n.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// An edge's SVG path: a curve between layers (leaving and arriving level), straight along a
/// waypoint.
fn edge_path(e: &Edge) -> String {
    let mut d = String::new();
    for (k, &(x, y)) in e.points.iter().enumerate() {
        if k == 0 {
            d.push_str(&format!("M{x:.1},{y:.1}"));
            continue;
        }
        let (px, py) = e.points[k - 1];
        if (py - y).abs() < f64::EPSILON {
            d.push_str(&format!(" L{x:.1},{y:.1}"));
        } else {
            let mid = (px + x) / 2.0;
            d.push_str(&format!(" C{mid:.1},{py:.1} {mid:.1},{y:.1} {x:.1},{y:.1}"));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, deps: &[&str], rule: Option<&str>) -> TaskSummary {
        TaskSummary {
            name: name.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            trigger_rule: rule.map(str::to_string),
        }
    }

    #[test]
    fn boxes_show_state_in_words_and_link_to_the_task() {
        let tasks = [
            task("extract", &[], None),
            task("load", &["extract"], Some("AllDone")),
        ];
        let svg = task_graph(&tasks, |name| TaskMark {
            state: Some(if name == "extract" {
                TaskState::Success
            } else {
                TaskState::Failed
            }),
            link: Some(format!("/ui/run#task-{name}")),
        })
        .into_string();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert_eq!(svg.matches("<path class=\"edge\"").count(), 1, "{svg}");
        assert!(svg.contains(r#"<a href="/ui/run#task-load">"#), "{svg}");
        assert!(
            svg.contains(r#"data-task="load" data-state="failed""#),
            "{svg}"
        );
        assert!(svg.contains("✗ failed · AllDone"), "{svg}");
        assert!(svg.contains("✓ success"), "{svg}");
        assert!(svg.contains(r##"stroke="#008000""##), "{svg}");
    }

    #[test]
    fn names_are_escaped() {
        let svg = task_graph(&[task("<b>", &[], None)], |_| TaskMark {
            state: None,
            link: None,
        })
        .into_string();
        assert!(!svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;b&gt;"), "{svg}");
    }
}
