-- Fleet state kept by the controller. Portable SQL: the same file runs on SQLite (embedded
-- default) and PostgreSQL (production). Times are unix milliseconds (BIGINT), documents JSON text,
-- flags 0/1 BIGINT (sqlx's Any driver cannot decode SQLite's BOOLEAN).

-- Devices and the capabilities they last announced.
CREATE TABLE devices (
    device_id      TEXT    NOT NULL PRIMARY KEY,
    hello_json     TEXT    NOT NULL,
    labels_json    TEXT    NOT NULL,
    arch           TEXT    NOT NULL,
    device_class   TEXT    NOT NULL,
    online         BIGINT  NOT NULL,
    first_seen_ms  BIGINT  NOT NULL,
    last_seen_ms   BIGINT  NOT NULL,
    -- highest telemetry window sequence counted; replays at or below it are duplicates
    telemetry_seq  BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX devices_by_class ON devices (device_class);

-- ModelDeployments: the source of truth in standalone mode, a mirror under Kubernetes.
CREATE TABLE deployments (
    namespace    TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    uid          TEXT    NOT NULL,
    generation   BIGINT  NOT NULL,
    spec_json    TEXT    NOT NULL,
    status_json  TEXT,
    deleting     BIGINT  NOT NULL DEFAULT 0,
    updated_ms   BIGINT  NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- The full desired document last published to each device; generation only grows.
CREATE TABLE device_desired (
    device_id      TEXT   NOT NULL PRIMARY KEY,
    generation     BIGINT NOT NULL,
    document_json  TEXT   NOT NULL,
    published_ms   BIGINT
);

-- Assignment of one deployment to one device, and what the device last reported for it.
CREATE TABLE assignments (
    namespace       TEXT   NOT NULL,
    name            TEXT   NOT NULL,
    device_id       TEXT   NOT NULL,
    version         TEXT   NOT NULL,
    variant         TEXT   NOT NULL,
    role            TEXT   NOT NULL,
    reason          TEXT   NOT NULL,
    -- the wire Assignment sent to the device (artifact, runtime, self-test)
    assignment_json TEXT   NOT NULL,
    generation      BIGINT NOT NULL,
    phase           TEXT,
    phase_reason    TEXT,
    serving_sha256  TEXT,
    updated_ms      BIGINT NOT NULL,
    PRIMARY KEY (namespace, name, device_id)
);
CREATE INDEX assignments_by_device ON assignments (device_id);

-- Rollout progress per deployment: survives controller restarts.
CREATE TABLE rollouts (
    namespace             TEXT    NOT NULL,
    name                  TEXT    NOT NULL,
    uid                   TEXT    NOT NULL,
    target_version        TEXT    NOT NULL,
    stable_version        TEXT,
    stable_spec_json      TEXT,
    step                  BIGINT  NOT NULL,
    phase                 TEXT    NOT NULL,
    step_started_ms       BIGINT  NOT NULL,
    last_analysis_ms      BIGINT  NOT NULL DEFAULT 0,
    cohort_state_json     TEXT    NOT NULL DEFAULT '{}',
    updated_ms            BIGINT  NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- Append-only history of rollout decisions (advance, promote, rollback, demote).
CREATE TABLE rollout_history (
    namespace  TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    at_ms      BIGINT NOT NULL,
    event      TEXT   NOT NULL,
    detail     TEXT   NOT NULL,
    PRIMARY KEY (namespace, name, seq)
);

-- Telemetry merged per cohort and interval (cohort = deployment x variant x device class x role).
CREATE TABLE cohort_rollups (
    namespace          TEXT   NOT NULL,
    name               TEXT   NOT NULL,
    variant            TEXT   NOT NULL,
    device_class       TEXT   NOT NULL,
    role               TEXT   NOT NULL,
    interval_start_ms  BIGINT NOT NULL,
    requests           BIGINT NOT NULL,
    errors             BIGINT NOT NULL,
    histogram_json     TEXT   NOT NULL,
    PRIMARY KEY (namespace, name, variant, device_class, role, interval_start_ms)
);
