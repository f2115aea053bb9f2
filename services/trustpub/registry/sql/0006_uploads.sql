-- Uploads through the gate (DESIGN.md, "The upload gate"): one row per file the index accepted,
-- written with its `upload.accepted` audit row in one statement. The provenance is the mint
-- record's (the upload token's), copied at record time, so a statement about the file stays
-- what it was when the publisher's token carried it.
CREATE TABLE uploads (
    id           uuid        PRIMARY KEY,
    mint_id      uuid        NOT NULL,
    publisher_id uuid        NOT NULL,
    project      text        NOT NULL,                    -- PEP 503-normalized
    version      text        NOT NULL,
    filename     text        NOT NULL,
    sha256       text        NOT NULL,
    size         bigint      NOT NULL,
    provenance   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uploads_sha256_hex CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT uploads_size_nonnegative CHECK (size >= 0),
    CONSTRAINT uploads_names_nonempty CHECK (project <> '' AND filename <> '' AND version <> '')
);
-- GET /_/provenance/<project>/<file>: the latest upload of that file name.
CREATE INDEX uploads_file ON uploads (project, filename, uploaded_at DESC);
CREATE INDEX uploads_mint ON uploads (mint_id);
