//! Who may put events into a source and read them: the one model that ingest, the API and the
//! engine all ask, so they cannot disagree.
//!
//! A source belongs to the first user who sends to it (they claim it). Its owner and admins
//! may write to it; its owner, admins and — when it is public — everyone may read it. A source
//! nobody has claimed yet is open: anyone may send to it (and so claim it), and a rule or a
//! `_topic` reference may name it (it has no events to read until someone claims it).

use std::collections::{HashMap, HashSet};

/// Who owns each source and whether it is public.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    owners: HashMap<String, Owner>,
}

#[derive(Debug, Clone)]
struct Owner {
    user: String,
    public: bool,
}

impl Sources {
    /// Records the owner of a source and whether it is public.
    pub fn set(&mut self, source: &str, owner: &str, public: bool) {
        self.owners.insert(
            source.to_owned(),
            Owner {
                user: owner.to_owned(),
                public,
            },
        );
    }

    /// Records `owner` for `source` unless it has one; returns whether it was new.
    pub fn claim(&mut self, source: &str, owner: &str) -> bool {
        if self.owners.contains_key(source) {
            return false;
        }
        self.set(source, owner, false);
        true
    }

    /// Whether `user` (an admin when `admin`) may put events into `source`: its owner, an
    /// admin, or anyone while nobody has claimed it.
    pub fn may_write(&self, user: &str, admin: bool, source: &str) -> bool {
        admin
            || self
                .owners
                .get(source)
                .is_none_or(|owner| owner.user == user)
    }

    /// Whether `user` (an admin when `admin`) may read events of `source`: its owner, an admin,
    /// anyone when it is public or while nobody has claimed it.
    pub fn may_read(&self, user: &str, admin: bool, source: &str) -> bool {
        admin
            || self
                .owners
                .get(source)
                .is_none_or(|owner| owner.public || owner.user == user)
    }
}

/// [`Sources`] with the set of admins: what the evaluator, which knows users only by name,
/// asks.
#[derive(Debug, Default, Clone)]
pub struct Access {
    admins: HashSet<String>,
    sources: Sources,
}

impl Access {
    pub fn set_admin(&mut self, user: &str, admin: bool) {
        if admin {
            self.admins.insert(user.to_owned());
        } else {
            self.admins.remove(user);
        }
    }

    /// Records the owner of a source and whether it is public.
    pub fn set_source(&mut self, source: &str, owner: &str, public: bool) {
        self.sources.set(source, owner, public);
    }

    /// Records a source's owner unless it already has one: the first poster owns it. Returns
    /// whether it was new.
    pub fn set_source_if_new(&mut self, source: &str, owner: &str) -> bool {
        self.sources.claim(source, owner)
    }

    pub fn is_admin(&self, user: &str) -> bool {
        self.admins.contains(user)
    }

    /// See [`Sources::may_write`].
    pub fn may_write(&self, user: &str, source: &str) -> bool {
        self.sources.may_write(user, self.is_admin(user), source)
    }

    /// See [`Sources::may_read`].
    pub fn can_read(&self, user: &str, source: &str) -> bool {
        self.sources.may_read(user, self.is_admin(user), source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_admins_and_the_public_read_and_write_as_documented() {
        let mut access = Access::default();
        access.set_admin("root", true);
        access.set_source("private", "ann", false);
        access.set_source("open", "ann", true);
        for (user, source, write, read) in [
            ("ann", "private", true, true),
            ("bob", "private", false, false),
            ("root", "private", true, true),
            ("bob", "open", false, true),
            // Nobody has claimed it: anyone may send (and claim it) and name it in a rule.
            ("bob", "unclaimed", true, true),
        ] {
            assert_eq!(
                access.may_write(user, source),
                write,
                "{user} writes {source}"
            );
            assert_eq!(access.can_read(user, source), read, "{user} reads {source}");
        }
        access.set_source_if_new("unclaimed", "bob");
        access.set_source_if_new("unclaimed", "ann");
        assert!(access.may_write("bob", "unclaimed") && !access.may_write("ann", "unclaimed"));
        assert!(!access.can_read("ann", "unclaimed"));
    }
}
