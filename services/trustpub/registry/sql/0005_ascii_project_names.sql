-- Project names are ASCII (PEP 508; DESIGN.md, "Names are ASCII"). Before this version the
-- name check let look-alikes through: its case-insensitive pattern matched U+017F as "s"
-- and U+212A (the Kelvin sign) as "k", and Python's lower() folded the latter to "k".
--
-- A pending publisher holding such a name would create that project on its first exchange,
-- past the check: it is removed, audited as pending.removed. Projects that exist keep their
-- name; renaming or removing one is the operator's decision.
WITH removed AS (
    DELETE FROM pending_publishers
    WHERE project_name COLLATE "C" !~ '^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$'
    RETURNING id, provider, issuer, spec, project_name, registrant
)
INSERT INTO audit_events (event_id, kind, publisher_id, outcome, detail)
SELECT gen_random_uuid(), 'pending.removed', id, 'removed',
       jsonb_build_object(
           'provider', provider, 'issuer', issuer, 'spec', spec, 'project', project_name,
           'registrant', registrant, 'by', 'migration 0005_ascii_project_names',
           'reason', 'the project name is not a PEP 508 name: ASCII letters, digits, ".", "_", "-"'
       )
FROM removed;
