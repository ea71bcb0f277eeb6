//! The UI in a real browser (issue 16): headless Chromium from Debian driven over WebDriver
//! (chromedriver; both installed by `e2e/plane up`), against the operator on the local plane.
//! A ServiceAccount's token logs in; the test opens the DAG list, a DAG's grid, a failed try's
//! log (served by kwok through the API server), triggers a run from the page, sees it appear,
//! and cancels it. It saves screenshots of the grid and the run page in
//! `target/e2e-screenshots/` (and in `docs/screenshots/` with `DAGOP_UPDATE_SCREENSHOTS=1`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dag_operator_e2e::eventually;
use dag_operator_e2e::operator::free_port;
use dag_operator_e2e::rights::{ACT, LOGS, READ};
use dag_operator_e2e::scenario::{Setup, dag_with_spec, setup};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver, installed by e2e/plane up)");
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session.
async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_string(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,900"],
        }),
    );
    let url = format!("http://127.0.0.1:{}", driver.port);
    eventually(
        Duration::from_secs(30),
        "chromedriver starts a session",
        || {
            let (url, caps) = (url.clone(), caps.clone());
            async move {
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(caps)
                    .connect(&url)
                    .await
                    .ok()
            }
        },
    )
    .await
}

fn screenshot_dirs() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs = vec![root.join("target/e2e-screenshots")];
    if std::env::var("DAGOP_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        dirs.push(root.join("docs/screenshots"));
    }
    dirs
}

async fn save_screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    for dir in screenshot_dirs() {
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(name), &png).expect("write screenshot");
    }
}

/// Waits until the page (after a click's navigation) has an element `css`.
async fn arrive(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
}

/// Reloads the page until `css` finds an element, and returns the page's text.
async fn reload_until(c: &Client, what: &str, css: &str) -> String {
    eventually(Duration::from_secs(60), what, || async {
        c.refresh().await.ok()?;
        c.find(Locator::Css(css)).await.ok()?;
        c.find(Locator::Css("body")).await.ok()?.text().await.ok()
    })
    .await
}

/// Waits, without reloading, until the open page shows an element `css` (live pages poll
/// themselves: issue 29, item 2); the body's text then.
async fn live_until(c: &Client, what: &str, css: &str) -> String {
    eventually(Duration::from_secs(60), what, || async {
        c.find(Locator::Css(css)).await.ok()?;
        c.find(Locator::Css("body")).await.ok()?.text().await.ok()
    })
    .await
}

/// Triggers `dag` at each logical date and waits for the runs to end.
async fn history(s: &Setup, dag: &str, dates: &[&str]) {
    for d in dates {
        s.cli(&["trigger", dag, "-n", &s.ns.name, "--logical-date", d]);
    }
    eventually(Duration::from_secs(90), "the runs end", || async {
        let runs = s.runs(dag).await;
        (runs.len() == dates.len()
            && runs
                .iter()
                .all(|r| r.state != dag_operator::store::RunState::Running))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_ui_in_a_real_browser() {
    let s = setup("browser").await;
    let ns = s.ns.name.clone();
    let token = s.ns.account("ui-user", &[READ, LOGS, ACT]);
    s.apply(&dag_with_spec(
        "etl",
        "  schedule: '0 2 * * *'\n  tasks:\n  - {name: extract, container: {image: busybox}}\n  - {name: transform, dependsOn: [extract], container: {image: e2e.local/hold}}\n  - {name: load, dependsOn: [transform], container: {image: busybox}}\n  - {name: report, dependsOn: [load], container: {image: busybox}}\n",
    ));
    s.apply(&dag_with_spec(
        "nightly",
        "  schedule: '30 1 * * *'\n  timezone: Europe/Paris\n  tasks:\n  - {name: load, container: {image: e2e.local/fail}}\n  - {name: publish, dependsOn: [load], container: {image: busybox}}\n",
    ));
    s.apply(&dag_with_spec(
        "held",
        "  tasks:\n  - {name: wait, container: {image: e2e.local/hold}}\n",
    ));
    let op = s.operator(&[]);
    // five runs of etl; the transform of the one for 11-26 fails, the others succeed
    let dates = [
        "2026-11-24T02:00:00Z",
        "2026-11-25T02:00:00Z",
        "2026-11-26T02:00:00Z",
        "2026-11-27T02:00:00Z",
        "2026-11-28T02:00:00Z",
    ];
    for d in dates {
        s.cli(&["trigger", "etl", "-n", &ns, "--logical-date", d]);
    }
    let runs = s.runs_until("etl", "five runs", |r| r.len() == 5).await;
    let bad = runs
        .iter()
        .find(|r| r.logical_date.to_rfc3339() == "2026-11-26T02:00:00+00:00")
        .map(|r| r.id.to_string())
        .expect("the run for 11-26");
    eventually(
        Duration::from_secs(90),
        "every transform told its outcome",
        || {
            let pods: Vec<(String, String)> = s
                .pods("etl")
                .iter()
                .filter(|p| p["metadata"]["labels"]["dagoperator.io/task"] == "transform")
                .map(|p| {
                    let name = p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let run = p["metadata"]["labels"]["dagoperator.io/run-id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    (name, run)
                })
                .collect();
            for (pod, run) in &pods {
                s.pod_outcome(pod, if *run == bad { "fail" } else { "succeed" });
            }
            async move { (pods.len() == 5).then_some(()) }
        },
    )
    .await;
    eventually(Duration::from_secs(90), "the etl runs end", || async {
        let runs = s.runs("etl").await;
        runs.iter()
            .all(|r| r.state != dag_operator::store::RunState::Running)
            .then_some(())
    })
    .await;
    history(
        &s,
        "nightly",
        &["2026-11-27T00:30:00Z", "2026-11-28T00:30:00Z"],
    )
    .await;

    let driver = Driver::start();
    let c = browser(&driver).await;
    let ui = format!("http://127.0.0.1:{}", op.ui_port);

    // log in with the token
    c.goto(&format!("{ui}/login")).await.expect("login page");
    c.find(Locator::Css("textarea[name=token]"))
        .await
        .expect("token field")
        .send_keys(&token)
        .await
        .expect("type the token");
    c.find(Locator::Css("button[type=submit]"))
        .await
        .expect("log in button")
        .click()
        .await
        .expect("log in");
    arrive(&c, "form.filters").await;

    // the DAG list, then a DAG's grid
    let list = reload_until(
        &c,
        "the DAG list",
        &format!("a[href='/ui/namespaces/{ns}/dags/etl']"),
    )
    .await;
    assert!(list.contains("Europe/Paris"), "{list}");
    // searched by part of a name: only nightly is left
    c.find(Locator::Css("form.filters input[name=q]"))
        .await
        .expect("the search field")
        .send_keys("NIGHT")
        .await
        .expect("type a search");
    c.find(Locator::Css("form.filters button"))
        .await
        .expect("the filter button")
        .click()
        .await
        .expect("search");
    eventually(Duration::from_secs(30), "only nightly listed", || async {
        let rows = c.find_all(Locator::Css("tr[data-health]")).await.ok()?;
        let first = rows.first()?.text().await.ok()?;
        (rows.len() == 1 && first.contains("nightly")).then_some(())
    })
    .await;
    c.find(Locator::Css(&format!(
        "a[href='/ui/namespaces/{ns}/dags/nightly']"
    )))
    .await
    .expect("the nightly DAG's link")
    .click()
    .await
    .expect("open the grid");
    arrive(&c, "#grid").await;
    let failed = c
        .find_all(Locator::Css("#grid a.cell[data-state=failed]"))
        .await
        .expect("cells");
    assert_eq!(failed.len(), 2, "each run's load failed");
    c.goto(&format!("{ui}/ui/namespaces/{ns}/dags/etl"))
        .await
        .expect("etl grid");
    let count = |state: &'static str| {
        let c = &c;
        async move {
            c.find_all(Locator::Css(&format!("#grid a.cell[data-state={state}]")))
                .await
                .map(|v| v.len())
                .unwrap_or_default()
        }
    };
    assert_eq!(
        (
            count("success").await,
            count("failed").await,
            count("upstream_failed").await
        ),
        (17, 1, 2),
        "4 runs x 4 tasks and one extract succeeded; one transform failed, its downstream not run"
    );
    save_screenshot(&c, "grid.png").await;

    // the task graph: a box per task, an arrow per dependency, coloured and labelled by the
    // newest run (11-28: every task succeeded); a box opens the task's tries in that run
    let boxes = c
        .find_all(Locator::Css("svg.graph g.task[data-state=success]"))
        .await
        .expect("graph boxes");
    assert_eq!(boxes.len(), 4, "every task of the newest run succeeded");
    let arrows = c
        .find_all(Locator::Css("svg.graph path.edge"))
        .await
        .expect("graph edges");
    assert_eq!(arrows.len(), 3, "extract → transform → load → report");
    let graph = c
        .find(Locator::Css("svg.graph"))
        .await
        .expect("the graph")
        .text()
        .await
        .expect("its text");
    assert!(graph.contains("✓ success"), "{graph}");
    c.find(Locator::Css("svg.graph a g.task[data-task=transform]"))
        .await
        .expect("the transform box")
        .click()
        .await
        .expect("open its tries");
    arrive(&c, "#task-transform").await;
    c.goto(&format!("{ui}/ui/namespaces/{ns}/dags/etl"))
        .await
        .expect("etl grid again");
    arrive(&c, "#grid").await;
    // the durations of the five runs, the failed one marked; the calendar's days
    let runs_drawn = c
        .find_all(Locator::Css("svg.durations g.run"))
        .await
        .expect("duration bars");
    assert_eq!(runs_drawn.len(), 5);
    let failed_drawn = c
        .find_all(Locator::Css("svg.durations g.run[data-state=failed]"))
        .await
        .expect("failed bars");
    assert_eq!(failed_drawn.len(), 1);
    let failed_day = c
        .find(Locator::Css("svg.calendar g.day[data-date='2026-11-26']"))
        .await
        .expect("the calendar's 11-26")
        .attr("data-outcome")
        .await
        .expect("its outcome");
    assert_eq!(failed_day.as_deref(), Some("failed"));
    let good_days = c
        .find_all(Locator::Css("svg.calendar g.day[data-outcome=success]"))
        .await
        .expect("good days");
    assert_eq!(good_days.len(), 4);

    // a failed try: its run page, then its log (from the Pod, through kwok)
    c.find(Locator::Css("#grid a.cell[data-state=failed]"))
        .await
        .expect("a failed cell")
        .click()
        .await
        .expect("open its run");
    let run_page = arrive(&c, "#tries").await;
    // the run's Gantt: a bar per try, the failed transform among them
    let bars = c
        .find_all(Locator::Css("svg.gantt g.bar"))
        .await
        .expect("Gantt bars");
    assert_eq!(bars.len(), 4, "a row per try of the four tasks");
    c.find(Locator::Css(
        "svg.gantt g.bar[data-task=transform][data-state=failed] rect.running",
    ))
    .await
    .expect("the failed transform ran");
    let text = run_page.text().await.expect("text");
    assert!(
        text.contains("failed") && text.contains("upstream_failed"),
        "{text}"
    );
    save_screenshot(&c, "run.png").await;
    c.find(Locator::Css("#task-transform a[href$='/log']"))
        .await
        .expect("the failed try's log link")
        .click()
        .await
        .expect("open the log");
    let log = eventually(Duration::from_secs(30), "the log shown", || async {
        let t = c.find(Locator::Css("#log")).await.ok()?.text().await.ok()?;
        t.contains("task finished").then_some(t)
    })
    .await;
    assert!(log.contains("task started"), "{log}");

    // trigger a run from the page, see it appear, cancel it
    c.goto(&format!("{ui}/ui/namespaces/{ns}/dags/held"))
        .await
        .expect("held grid");
    c.find(Locator::Css("#trigger input[name=params]"))
        .await
        .expect("params field")
        .send_keys(r#"{"note": "from the browser"}"#)
        .await
        .expect("type params");
    c.find(Locator::Css("#trigger button"))
        .await
        .expect("trigger button")
        .click()
        .await
        .expect("trigger");
    let notice = arrive(&c, "#notice").await;
    assert!(
        notice
            .text()
            .await
            .unwrap_or_default()
            .contains("Triggered")
    );
    // the page follows: the run appears in the grid without a reload
    live_until(
        &c,
        "the triggered run in the grid",
        "#grid th a.cell[href*='/runs/']",
    )
    .await;
    c.find(Locator::Css("#grid th a.cell[href*='/runs/']"))
        .await
        .expect("the run")
        .click()
        .await
        .expect("open the run");
    arrive(&c, "#actions").await;
    let params = c
        .find(Locator::Css("pre"))
        .await
        .expect("params")
        .text()
        .await
        .unwrap_or_default();
    assert!(params.contains("from the browser"), "{params}");
    c.find(Locator::Css("#actions button[value=cancel]"))
        .await
        .expect("the cancel button")
        .click()
        .await
        .expect("cancel");
    arrive(&c, "#notice").await;
    let page = live_until(&c, "the cancel in the run's actions", "#asked").await;
    let page = if page.contains("cancelled by") {
        page
    } else {
        eventually(
            Duration::from_secs(30),
            "the cancel carried out",
            || async {
                c.refresh().await.ok()?;
                let t = c.find(Locator::Css("body")).await.ok()?.text().await.ok()?;
                t.contains("cancelled by").then_some(t)
            },
        )
        .await
    };
    assert!(page.contains("system:serviceaccount:"), "{page}");
    eventually(Duration::from_secs(30), "the held Pod deleted", || async {
        s.pods("held").is_empty().then_some(())
    })
    .await;

    // a phone's width (issue 29, item 8): the page fits, wide parts scroll inside it
    c.set_window_size(390, 844).await.expect("a phone's width");
    c.goto(&format!("{ui}/ui/namespaces/{ns}/dags/etl"))
        .await
        .expect("etl grid on a phone");
    arrive(&c, "#grid").await;
    let fits = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            vec![],
        )
        .await
        .expect("measure the page");
    assert_eq!(
        fits,
        serde_json::Value::Bool(true),
        "the page is wider than a phone"
    );
    // every cell says its state without colour: a symbol in it
    let marks = c
        .find(Locator::Css("#grid a.cell[data-state=failed]"))
        .await
        .expect("a failed cell")
        .text()
        .await
        .expect("its text");
    assert_eq!(marks, "✗");
    save_screenshot(&c, "phone.png").await;
    c.close().await.expect("close the browser");
    drop(op);
}
