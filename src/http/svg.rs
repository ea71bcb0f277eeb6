//! Pictures drawn on the server as inline SVG (issue 29): no script, no framework, nothing
//! fetched — the page is complete as sent, and the Content Security Policy needs no change.
//! The task graph of a DAG, laid out by `layout.rs`: a box per task coloured by its state in
//! the selected run (its border), the state also written in the box (never colour alone), the trigger rule
//! when it is not the default, arrows from upstream to downstream, each box a link to the
//! task's tries. A run's Gantt, the durations of a DAG's latest runs and its calendar of
//! daily outcomes are drawn from `charts.rs`' geometry.

use maud::{Markup, html};

use chrono::Duration;

use super::charts::{Calendar, DurationBar, Gantt, seconds_label};
use super::directory::TaskSummary;
use super::layout::{BOX_HEIGHT, BOX_WIDTH, Edge, layout};
use crate::graph::TaskState;
use crate::store::RunState;

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

/// The width of a chart's plot, and of the label column left of a Gantt.
const PLOT_WIDTH: f64 = 720.0;
const LABEL_WIDTH: f64 = 180.0;
const ROW: f64 = 22.0;

/// A run's Gantt: a row per try, its waiting part hatched grey, its running part in its
/// state's colour, the duration written after the bar.
pub fn gantt_chart(g: &Gantt, link: impl Fn(&str, i32) -> String) -> Markup {
    let height = 28.0 + g.bars.len() as f64 * ROW;
    let width = LABEL_WIDTH + PLOT_WIDTH + 80.0;
    let x = |f: f64| LABEL_WIDTH + f * PLOT_WIDTH;
    html! {
        svg.gantt xmlns="http://www.w3.org/2000/svg" role="img"
            aria-label=(format!("Gantt of {} tries from {}", g.bars.len(), g.axis.start.to_rfc3339()))
            width=(width) height=(height) viewBox=(format!("0 0 {width} {height}")) {
            @for t in g.axis.ticks() {
                line x1=(x(t.at)) x2=(x(t.at)) y1="14" y2=(height) stroke="#ddd" {}
                text x=(x(t.at)) y="11" font-size="10" text-anchor="middle" { (t.label) }
            }
            @for (i, b) in g.bars.iter().enumerate() {
                @let y = 20.0 + i as f64 * ROW;
                @let st = b.state.as_str();
                a href=(link(&b.task, b.try_number)) {
                    g.bar data-task=(b.task) data-try=(b.try_number) data-state=(st) {
                        title { (b.task) " try " (b.try_number) " · " (st)
                            @if let Some(sec) = b.seconds { " · " (seconds_label(sec)) } }
                        text x="4" y=(y + 14.0) font-size="12" { (short(&b.task, 18)) " #" (b.try_number) }
                        @if let Some((from, to)) = b.queued {
                            rect.queued x=(x(from)) y=(y + 4.0) width=((x(to) - x(from)).max(1.0)) height=(ROW - 8.0)
                                fill="#bbb" {}
                        }
                        @if let Some((from, to)) = b.running {
                            rect.running x=(x(from)) y=(y + 2.0) width=((x(to) - x(from)).max(2.0)) height=(ROW - 4.0)
                                fill=(super::ui::task_colour(Some(b.state))) stroke="#333" {}
                        }
                        @let end = b.running.or(b.queued).map_or(0.0, |(_, to)| to);
                        text x=(x(end) + 4.0) y=(y + 14.0) font-size="11" {
                            (state_mark(Some(b.state)))
                            @if let Some(sec) = b.seconds { " " (seconds_label(sec)) }
                        }
                    }
                }
            }
        }
    }
}

/// The durations of a DAG's latest runs, oldest left: a bar each in its run's colour, a
/// failed run marked ✗ above its bar; each bar links to its run.
pub fn durations_chart(
    bars: &[DurationBar],
    longest: i64,
    link: impl Fn(&DurationBar) -> String,
) -> Markup {
    let plot = 120.0;
    let step = (PLOT_WIDTH / bars.len().max(1) as f64).min(28.0);
    let width = 60.0 + step * bars.len() as f64 + 10.0;
    let height = plot + 40.0;
    let base = plot + 20.0;
    html! {
        svg.durations xmlns="http://www.w3.org/2000/svg" role="img"
            aria-label=(format!("durations of the latest {} runs, longest {}", bars.len(), seconds_label(longest)))
            width=(width) height=(height) viewBox=(format!("0 0 {width} {height}")) {
            line x1="56" x2=(width) y1=(base) y2=(base) stroke="#999" {}
            text x="52" y=(base - plot + 4.0) font-size="10" text-anchor="end" { (seconds_label(longest)) }
            text x="52" y=(base) font-size="10" text-anchor="end" { "0s" }
            @for (i, b) in bars.iter().enumerate() {
                @let x = 60.0 + i as f64 * step;
                @let h = (b.height * plot).max(1.0);
                a href=(link(b)) {
                    g.run data-state=(b.state.as_str()) {
                        title { (b.logical_date.to_rfc3339()) " · " (b.state.as_str()) " · " (seconds_label(b.seconds)) }
                        rect x=(x) y=(base - h) width=(step - 4.0) height=(h)
                            fill=(super::ui::run_colour(b.state)) stroke="#333" {}
                        @if b.state == RunState::Failed {
                            text x=(x + (step - 4.0) / 2.0) y=(base - h - 3.0) font-size="12" text-anchor="middle" fill="#b00" { "✗" }
                        }
                    }
                }
            }
        }
    }
}

/// The calendar: a column per week, a row per weekday (Monday on top), each day in the colour
/// of its worst outcome, with its counts in the tooltip and a symbol for the outcome.
pub fn calendar_chart(c: &Calendar, link: impl Fn(chrono::NaiveDate) -> String) -> Markup {
    let cell = 16.0;
    let width = 30.0 + f64::from(c.weeks) * (cell + 2.0);
    let height = 7.0 * (cell + 2.0) + 4.0;
    html! {
        svg.calendar xmlns="http://www.w3.org/2000/svg" role="img"
            aria-label=(format!("daily outcomes from {}", c.first))
            width=(width) height=(height) viewBox=(format!("0 0 {width} {height}")) {
            @for (row, name) in ["Mon", "", "Wed", "", "Fri", "", "Sun"].iter().enumerate() {
                text x="0" y=(row as f64 * (cell + 2.0) + 12.0) font-size="9" { (name) }
            }
            @for week in 0..c.weeks {
                @for weekday in 0..7u32 {
                    @let date = c.first + Duration::days(i64::from(week * 7 + weekday));
                    @if date <= c.today {
                        @let day = c.days.get(&date);
                        @let outcome = day.and_then(|d| d.outcome());
                        @let x = 30.0 + f64::from(week) * (cell + 2.0);
                        @let y = f64::from(weekday) * (cell + 2.0);
                        @let fill = outcome.map_or("#eee", super::ui::run_colour);
                        @let label = outcome.map_or("no run", RunState::as_str);
                        @let counts = day.map(|d| format!(" · {} ok, {} failed, {} running, {} cancelled", d.success, d.failed, d.running, d.cancelled)).unwrap_or_default();
                        a href=(link(date)) {
                            g.day data-date=(date.to_string()) data-outcome=(label) {
                                title { (date) " · " (label) (counts) }
                                rect x=(x) y=(y) width=(cell) height=(cell) rx="2" fill=(fill) stroke="#999" {}
                                @if outcome == Some(RunState::Failed) {
                                    text x=(x + cell / 2.0) y=(y + 12.0) font-size="10" text-anchor="middle" fill="#fff" { "✗" }
                                }
                            }
                        }
                    }
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
        assert!(svg.contains(r##"stroke="#009e73""##), "{svg}");
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
