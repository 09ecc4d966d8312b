//! The store behaves the same on SQLite and PostgreSQL.

use std::collections::BTreeMap;

use edgefleet_controller::store::{AssignmentRecord, DeviceWrite, ModelReport, RolloutRow, Store};
use edgefleet_protocol::wire::{DeviceId, Hello, ModelPhase, Role};

mod common;

fn hello(id: &str) -> Hello {
    Hello {
        device_id: DeviceId::new(id).expect("id"),
        agent_version: "0.1.0".into(),
        labels: BTreeMap::from([("site".into(), "a".into())]),
        arch: "x86_64".into(),
        cores: 2,
        cpu_features: vec!["avx2".into()],
        memory_total_mib: 2048,
        memory_available_mib: 1500,
        disk_free_mib: 9000,
        accelerators: vec![],
        runtimes: vec![],
        site_cache_url: None,
    }
}

fn assignment(device: &str, variant: &str, generation: i64) -> AssignmentRecord {
    let mut record = edgefleet_core::testutil::record(device, "1", Role::Stable, None);
    std::sync::Arc::make_mut(&mut record.assignment).variant = variant.into();
    record.reason = "fits".into();
    record.generation = generation;
    record
}

async fn exercise(store: Store) {
    // devices: a batch of presence, then a status for d1 and one for a device never seen
    let (d1, d2) = (hello("d1"), hello("d2"));
    let class = "x86_64-none-mem4g";
    store
        .record_presence(
            &[
                DeviceWrite {
                    device: &d1.device_id,
                    hello: Some((&d1, class)),
                    online: Some(true),
                },
                DeviceWrite {
                    device: &d2.device_id,
                    hello: Some((&d2, class)),
                    online: None,
                },
            ],
            10,
        )
        .await
        .expect("hellos");
    store
        .record_presence(
            &[DeviceWrite {
                device: &d1.device_id,
                hello: Some((&d1, class)),
                online: None,
            }],
            20,
        )
        .await
        .expect("hello again");
    let nobody = DeviceId::new("nobody").expect("id");
    store
        .record_presence(
            &[
                DeviceWrite {
                    device: &nobody,
                    hello: None,
                    online: Some(true),
                },
                DeviceWrite {
                    device: &d1.device_id,
                    hello: None,
                    online: Some(false),
                },
            ],
            30,
        )
        .await
        .expect("statuses");
    let devices = store.load_devices().await.expect("load");
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].hello, hello("d1"));
    assert!(!devices[0].online);
    assert_eq!(devices[0].last_seen_ms, 30);
    assert_eq!(devices[1].hello, hello("d2"));
    assert!(devices[1].online, "a new device starts online");
    assert_eq!(devices[1].last_seen_ms, 10);

    // deployments: generation grows only with the spec
    let a = store
        .put_deployment("ns", "md", "uid-1", "{\"a\":1}", 1)
        .await
        .expect("put");
    assert_eq!((a.generation, a.uid.as_str()), (1, "uid-1"));
    let b = store
        .put_deployment("ns", "md", "uid-2", "{\"a\":1}", 2)
        .await
        .expect("same spec");
    assert_eq!((b.generation, b.uid.as_str()), (1, "uid-1"));
    let c = store
        .put_deployment("ns", "md", "uid-3", "{\"a\":2}", 3)
        .await
        .expect("new spec");
    assert_eq!(c.generation, 2);
    store
        .set_deployment_status("ns", "md", "{\"phase\":\"Pending\"}")
        .await
        .expect("status");
    assert_eq!(
        store.list_deployments().await.expect("list")[0]
            .status_json
            .as_deref(),
        Some("{\"phase\":\"Pending\"}")
    );

    // assignments keep device reports while unchanged, reset them when the model changes
    store
        .replace_assignments(
            "ns",
            "md",
            &[assignment("d1", "fp32", 1), assignment("d2", "int8", 1)],
            5,
        )
        .await
        .expect("assign");
    let report = ModelReport {
        device: "d1",
        namespace: "ns",
        name: "md",
        version: "1",
        variant: "fp32",
        phase: "Ready",
        reason: None,
        serving_sha256: Some("ab"),
    };
    let downloading = ModelReport {
        phase: "Downloading",
        serving_sha256: None,
        ..report
    };
    let stale = ModelReport {
        variant: "int4",
        ..report
    };
    let d2 = ModelReport {
        device: "d2",
        variant: "int8",
        phase: "Loading",
        ..downloading
    };
    assert_eq!(
        store
            .record_model_states(&[downloading, stale, report, d2], 6)
            .await
            .expect("reports"),
        2,
        "d1 and d2; the stale variant matches nothing"
    );
    let rows = store.assignments("ns", "md").await.expect("rows");
    assert_eq!(
        (
            rows[0].phase.map(ModelPhase::as_str),
            rows[0].serving_sha256.as_deref()
        ),
        (Some("Ready"), Some("ab")),
        "the last of d1's reports wins"
    );
    assert_eq!(rows[1].phase, Some(ModelPhase::Loading));
    // the rows of the devices that reported, read back alone, are the same rows
    let reread = store
        .assignments_of("ns", "md", &["d2", "nobody", "d1"])
        .await
        .expect("rows of d1 and d2");
    assert_eq!(
        reread, rows,
        "sorted by device, devices without a row left out"
    );
    assert_eq!(
        store
            .assignments_of("ns", "other", &["d1"])
            .await
            .expect("no rows"),
        vec![]
    );
    assert_eq!(
        store
            .record_model_states(&[stale], 6)
            .await
            .expect("stale report"),
        0
    );
    store
        .replace_assignments(
            "ns",
            "md",
            &[assignment("d1", "fp32", 1), assignment("d2", "fp16", 2)],
            7,
        )
        .await
        .expect("reassign");
    let rows = store.assignments("ns", "md").await.expect("rows");
    assert_eq!(rows[0].phase, Some(ModelPhase::Ready));
    assert_eq!(rows[1].variant(), "fp16");
    assert_eq!(rows[1].phase, None);
    store
        .replace_assignments("ns", "md", &[assignment("d2", "fp16", 2)], 8)
        .await
        .expect("drop d1");
    assert_eq!(store.device_assignments("d1").await.expect("d1").len(), 0);
    assert_eq!(store.device_assignments("d2").await.expect("d2")[0].1, "md");
    // identical entries read back are parsed once and shared
    store
        .replace_assignments(
            "ns",
            "shared",
            &[assignment("d3", "int8", 1), assignment("d4", "int8", 1)],
            8,
        )
        .await
        .expect("two devices, one entry");
    let rows = store.assignments("ns", "shared").await.expect("rows");
    assert_eq!(rows[0].assignment, rows[1].assignment);
    assert!(std::sync::Arc::ptr_eq(
        &rows[0].assignment,
        &rows[1].assignment
    ));
    store
        .replace_assignments("ns", "shared", &[], 8)
        .await
        .expect("gone");
    // a device's rows of other deployments, for rebuilding its document after one changed
    store
        .replace_assignments("ns", "other", &[assignment("d2", "int8", 1)], 8)
        .await
        .expect("second deployment");
    let all = store
        .assignments_of_devices(&["d1", "d2"])
        .await
        .expect("all rows");
    assert_eq!(all["d2"].len(), 2);
    let others = store
        .assignments_of_devices_except(&["d1", "d2"], "ns", "md")
        .await
        .expect("other rows");
    let names: Vec<&str> = others["d2"]
        .iter()
        .map(|(_, name, _)| name.as_str())
        .collect();
    assert_eq!(names, ["other"]);
    assert!(!others.contains_key("d1"));
    store
        .replace_assignments("ns", "other", &[], 8)
        .await
        .expect("second deployment gone");

    // desired documents
    assert_eq!(store.desired("d2").await.expect("none"), None);
    store.put_desired("d2", 3, "{}", 9).await.expect("desired");
    store
        .put_desired("d2", 4, "{\"x\":1}", 9)
        .await
        .expect("desired");
    assert_eq!(
        store.desired("d2").await.expect("some"),
        Some((4, "{\"x\":1}".into()))
    );

    // rollouts and history
    let rollout = RolloutRow {
        uid: "uid-1".into(),
        target_version: "2".into(),
        stable_version: Some("1".into()),
        stable_spec_json: Some("{}".into()),
        step: 2,
        phase: "Progressing".into(),
        step_started_ms: 100,
        last_analysis_ms: 0,
        cohort_state_json: "{}".into(),
    };
    store
        .put_rollout("ns", "md", &rollout, 10)
        .await
        .expect("rollout");
    assert_eq!(store.rollout("ns", "md").await.expect("get"), Some(rollout));
    store
        .append_history("ns", "md", "Advance", "to step 2", 11)
        .await
        .expect("history");
    store
        .append_history("ns", "md", "Promote", "all passed", 12)
        .await
        .expect("history");
    let history = store.history("ns", "md").await.expect("history");
    assert_eq!(
        history.iter().map(|h| h.1.as_str()).collect::<Vec<_>>(),
        ["Advance", "Promote"]
    );

    store.purge_deployment("ns", "md").await.expect("purge");
    assert!(
        store
            .get_deployment("ns", "md")
            .await
            .expect("get")
            .is_none()
    );
    assert!(store.rollout("ns", "md").await.expect("get").is_none());
}

#[tokio::test]
async fn store_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
    exercise(Store::connect(&url).await.expect("sqlite store")).await;
    // state survives a reconnect (a controller restart)
    let again = Store::connect(&url).await.expect("reopen");
    assert_eq!(again.load_devices().await.expect("devices").len(), 2);
}

#[tokio::test]
async fn store_on_postgres() {
    let db = common::TempPostgres::create("store").await;
    exercise(Store::connect(&db.url).await.expect("postgres store")).await;
    db.drop().await;
}

#[tokio::test]
async fn a_bulk_write_on_postgres_refreshes_the_planner_statistics_at_once() {
    let db = common::TempPostgres::create("analyze").await;
    let store = Store::connect(&db.url).await.expect("postgres store");
    let analyzed = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'assignments'",
        )
        .fetch_one(store.pool())
        .await
        .expect("table statistics")
    };
    let before = analyzed().await;
    let few: Vec<_> = (0..10)
        .map(|i| assignment(&format!("d{i}"), "int8", 1))
        .collect();
    store
        .replace_assignments("ns", "md", &few, 1)
        .await
        .expect("a few rows");
    assert_eq!(
        analyzed().await,
        before,
        "a small write leaves it to autovacuum"
    );
    let many: Vec<_> = (0..10_000)
        .map(|i| assignment(&format!("d{i:05}"), "int8", 1))
        .collect();
    store
        .replace_assignments("ns", "md", &many, 2)
        .await
        .expect("a rollout's rows");
    assert_eq!(analyzed().await, before + 1);
    db.drop().await;
}
