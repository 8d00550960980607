-- Outpost schema, version 4: directory passwords cached at the site.
--
-- After a successful LDAP bind the site keeps an Argon2id verifier of the password
-- (identities, kind 'password') and when it was last confirmed by the directory. While
-- the directory cannot be reached, a verifier younger than [directory]
-- verifier_max_age_hours decides; an older one is refused. NULL: a password set by an
-- administrator (`outpost users import`), not a directory cache.
ALTER TABLE identities ADD COLUMN verified_at REAL;
