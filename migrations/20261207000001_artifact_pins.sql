-- What each oci:// reference of a deployment resolved to, per model version: a tag is looked
-- up once, so every device of a rollout gets the same bytes even if the tag moves meanwhile.
CREATE TABLE artifact_pins (
    namespace      TEXT   NOT NULL,
    name           TEXT   NOT NULL,
    uid            TEXT   NOT NULL,
    model_version  TEXT   NOT NULL,
    -- the reference as the spec writes it: oci://registry/repo:tag
    reference      TEXT   NOT NULL,
    -- oci://registry/repo@sha256:<manifest digest>
    pinned_uri     TEXT   NOT NULL,
    -- the model file: the manifest's one layer
    sha256         TEXT   NOT NULL,
    size_bytes     BIGINT NOT NULL,
    resolved_ms    BIGINT NOT NULL,
    PRIMARY KEY (namespace, name, uid, model_version, reference)
);
