-- API tokens of the admin API (DESIGN.md, "The admin API"). The secret is never stored: only
-- the SHA-256 of the whole token, looked up by the id the token carries. Every token expires.
CREATE TABLE admin_tokens (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL,
    scope        text        NOT NULL,
    projects     text[]      NOT NULL DEFAULT '{}',       -- PEP 503-normalized, for scope owner
    secret_hash  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL DEFAULT '',
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    CONSTRAINT admin_tokens_scope CHECK (scope IN ('admin', 'read', 'owner')),
    CONSTRAINT admin_tokens_owner_projects CHECK ((scope = 'owner') = (cardinality(projects) > 0)),
    CONSTRAINT admin_tokens_hash_length CHECK (octet_length(secret_hash) = 32),
    CONSTRAINT admin_tokens_name_nonempty CHECK (name <> '')
);
