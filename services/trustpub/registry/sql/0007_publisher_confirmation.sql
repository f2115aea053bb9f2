-- Owners are confirmed (DESIGN.md, "Owners are confirmed"). A GitHub or GitLab publisher
-- registered without its owner's immutable id (GitHub's owner id, GitLab's namespace id) does
-- not mint on first use any more: the first matching token pins the id and is refused, and the
-- publisher mints once an operator confirmed that id (trustpub publisher confirm).
ALTER TABLE publishers ADD COLUMN needs_confirmation boolean NOT NULL DEFAULT false;
ALTER TABLE pending_publishers ADD COLUMN needs_confirmation boolean NOT NULL DEFAULT false;

-- Registered earlier without the owner's id and not used since (the id is still open): whoever
-- presented a token first would own them. They wait for the confirmation too, audited.
-- Publishers whose id a token pinned before this version keep minting.
WITH marked AS (
    UPDATE publishers SET needs_confirmation = true
    WHERE (provider = 'github' AND spec->>'owner_id' IS NULL)
       OR (provider = 'gitlab' AND spec->>'namespace_id' IS NULL)
    RETURNING id, provider, issuer, spec
)
INSERT INTO audit_events (event_id, kind, publisher_id, outcome, detail)
SELECT gen_random_uuid(), 'publisher.needs_confirmation', id, 'disabled',
       jsonb_build_object(
           'provider', provider, 'issuer', issuer, 'spec', spec,
           'by', 'migration 0007_publisher_confirmation',
           'reason', 'registered without the owner''s id: mints once an operator confirms the id its first token pins'
       )
FROM marked;

WITH marked AS (
    UPDATE pending_publishers SET needs_confirmation = true
    WHERE (provider = 'github' AND spec->>'owner_id' IS NULL)
       OR (provider = 'gitlab' AND spec->>'namespace_id' IS NULL)
    RETURNING id, provider, issuer, spec, project_name
)
INSERT INTO audit_events (event_id, kind, publisher_id, outcome, detail)
SELECT gen_random_uuid(), 'pending.needs_confirmation', id, 'disabled',
       jsonb_build_object(
           'provider', provider, 'issuer', issuer, 'spec', spec, 'project', project_name,
           'by', 'migration 0007_publisher_confirmation',
           'reason', 'registered without the owner''s id: mints once an operator confirms the id its first token pins'
       )
FROM marked;
