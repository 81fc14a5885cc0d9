-- A fleet store written by edgekit before store migrations existed (schema v1, no schema_version table).
-- Made with pg_dump --inserts of a store populated by that code; SET lines and the schema name removed so
-- the test can load it into a schema of its own.

CREATE TABLE deployments (
    fleet text NOT NULL,
    device text NOT NULL,
    t double precision NOT NULL,
    name text NOT NULL,
    version text NOT NULL,
    sha256 text NOT NULL,
    counter bigint NOT NULL,
    size bigint NOT NULL,
    path text,
    rollout text
);

CREATE TABLE devices (
    fleet text NOT NULL,
    device text NOT NULL,
    profile text,
    status text,
    package_name text,
    package_version text,
    package_counter bigint,
    runtime text,
    capabilities text,
    labels text DEFAULT '{}'::text NOT NULL,
    last_seen double precision
);

CREATE TABLE events (
    fleet text NOT NULL,
    device text NOT NULL,
    digest text NOT NULL,
    t double precision NOT NULL,
    received double precision NOT NULL,
    kind text NOT NULL,
    body text NOT NULL
);

CREATE TABLE rollouts (
    id text NOT NULL,
    fleet text NOT NULL,
    status text NOT NULL,
    created double precision NOT NULL,
    updated double precision NOT NULL,
    body text NOT NULL
);

CREATE TABLE telemetry (
    fleet text NOT NULL,
    device text NOT NULL,
    digest text NOT NULL,
    t double precision NOT NULL,
    received double precision NOT NULL,
    package_version text,
    runtime text,
    interval_s double precision,
    inferences bigint,
    errors bigint,
    throughput double precision,
    p50 double precision,
    p95 double precision,
    p99 double precision,
    cpu_percent double precision,
    rss_bytes bigint,
    temperature_c double precision,
    power_w double precision,
    power_source text,
    energy_mj double precision,
    energy_is_estimate integer,
    dropped bigint
);

INSERT INTO deployments VALUES ('demo', 'cam-1', 1796015847.483752, 'digits', '1.0.0', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 3, 1234, NULL, 'r1');

INSERT INTO devices VALUES ('demo', 'cam-2', 'rpi5', 'online', 'digits', '1.0.0', 3, 'onnxruntime:CPUExecutionProvider', '{"runtimes": ["onnxruntime:CPUExecutionProvider"]}', '{}', 1764460805);
INSERT INTO devices VALUES ('demo', 'cam-1', 'rpi5', 'online', 'digits', '1.0.0', 3, 'onnxruntime:CPUExecutionProvider', '{"runtimes": ["onnxruntime:CPUExecutionProvider"]}', '{"group": "lobby"}', 1764460805);

INSERT INTO events VALUES ('demo', 'cam-1', '744d1ddc86219d494a290e5bed5f793a', 1764460805, 1764460805, 'installed', '{"kind": "installed", "time": "2025-11-30T00:00:05Z", "version": "1.0.0"}');
INSERT INTO events VALUES ('demo', 'cam-2', 'd3f856ad1fbc9aaacdfd411fcaa37532', 1764460805, 1764460805, 'installed', '{"kind": "installed", "time": "2025-11-30T00:00:05Z", "version": "1.0.0"}');

INSERT INTO rollouts VALUES ('r1', 'demo', 'completed', 1796015847.4849472, 1796015847.4849472, '{"fleet": "demo", "id": "r1", "status": "completed", "waves": []}');

INSERT INTO telemetry VALUES ('demo', 'cam-1', 'bd67f0d77e0ffcb021f642df1c7a09f6', 1764460810, 1764460810, '1.0.0', 'onnxruntime:CPUExecutionProvider', 10, 200, 0, 20, 1.5, 2.5, 3, 12.5, 62914560, NULL, 3.2, 'estimate', 160, 1, 0);
INSERT INTO telemetry VALUES ('demo', 'cam-1', '12270e5da0f301853f5ff4d1d5e31983', 1764460811, 1764460811, '1.0.0', 'onnxruntime:CPUExecutionProvider', 10, 201, 1, 21, 1.5, 2.5, 3, 12.5, 62914560, NULL, 3.2, 'estimate', 160, 1, 0);
INSERT INTO telemetry VALUES ('demo', 'cam-1', 'dc07796ba5ec7a5d3e62ba4ccf802827', 1764460812, 1764460812, '1.0.0', 'onnxruntime:CPUExecutionProvider', 10, 202, 2, 22, 1.5, 2.5, 3, 12.5, 62914560, NULL, 3.2, 'estimate', 160, 1, 0);
INSERT INTO telemetry VALUES ('demo', 'cam-2', '08f18a5212a99dd36bdfec74b23bb1fe', 1764460810, 1764460810, '1.0.0', 'onnxruntime:CPUExecutionProvider', 10, 200, 0, 20, 2.5, 3.5, 4, 12.5, 62914560, 48, 3.2, 'estimate', 160, 1, 0);
INSERT INTO telemetry VALUES ('demo', 'cam-2', 'dca47a788e5d0f40f37c6322f124fc87', 1764460811, 1764460811, '1.0.0', 'onnxruntime:CPUExecutionProvider', 10, 201, 1, 21, 2.5, 3.5, 4, 12.5, 62914560, 48, 3.2, 'estimate', 160, 1, 0);
INSERT INTO telemetry VALUES ('demo', 'cam-2', 'ebd479680ff5f1dd3562b7aba3d63eb3', 1764460812, 1764460812, '1.0.0', 'onnxruntime:CPUExecutionProvider', 10, 202, 2, 22, 2.5, 3.5, 4, 12.5, 62914560, 48, 3.2, 'estimate', 160, 1, 0);

ALTER TABLE ONLY deployments
    ADD CONSTRAINT deployments_pkey PRIMARY KEY (fleet, device, t);

ALTER TABLE ONLY devices
    ADD CONSTRAINT devices_pkey PRIMARY KEY (fleet, device);

ALTER TABLE ONLY events
    ADD CONSTRAINT events_pkey PRIMARY KEY (fleet, device, digest);

ALTER TABLE ONLY rollouts
    ADD CONSTRAINT rollouts_pkey PRIMARY KEY (id);

ALTER TABLE ONLY telemetry
    ADD CONSTRAINT telemetry_pkey PRIMARY KEY (fleet, device, digest);

CREATE INDEX events_by_time ON events USING btree (fleet, received);

CREATE INDEX telemetry_by_time ON telemetry USING btree (fleet, device, received);

