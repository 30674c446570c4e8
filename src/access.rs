//! Who may do what (DESIGN §10): the `clients:` list keyed by certificate
//! common name. Without the list every CA-signed client may do everything;
//! with it, a name not on the list may do nothing. The list is swapped
//! whole on reload ([`SharedAccess`]) and every request (HTTP) or read batch
//! (socket) looks its grant up again, so a removed client loses its access
//! on its open connections too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// What one client certificate may do.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    /// Certificate common name.
    pub name: String,
    /// Prefixes it may write (`*` = all).
    pub write: Vec<String>,
    /// Prefixes it may read (`*` = all).
    pub read: Vec<String>,
    /// Whether it may use the admin routes.
    pub admin: bool,
}

/// The permissions of every known client.
#[derive(Debug, Clone, Default)]
pub struct Access {
    clients: Option<HashMap<String, Arc<ClientSettings>>>,
}

/// What one connection may do.
#[derive(Debug, Clone)]
pub enum Grant {
    /// No `clients:` list: everything.
    All,
    /// Listed: what the entry says.
    Limited(Arc<ClientSettings>),
    /// A list exists and this client is not on it.
    Nothing,
}

fn allows(prefixes: &[String], prefix: &str) -> bool {
    prefixes.iter().any(|p| p == "*" || p == prefix)
}

impl Access {
    /// Permissions from the configuration's `clients:`.
    pub fn new(clients: Option<&[ClientSettings]>) -> Access {
        Access {
            clients: clients.map(|list| {
                list.iter()
                    .map(|c| (c.name.clone(), Arc::new(c.clone())))
                    .collect()
            }),
        }
    }

    /// The grant of a peer by certificate common name.
    pub fn grant(&self, name: Option<&str>) -> Grant {
        match &self.clients {
            None => Grant::All,
            Some(map) => name
                .and_then(|n| map.get(n))
                .map_or(Grant::Nothing, |c| Grant::Limited(c.clone())),
        }
    }
}

impl Grant {
    /// Whether the client may write series with this prefix.
    pub fn may_write(&self, prefix: &str) -> bool {
        match self {
            Grant::All => true,
            Grant::Limited(c) => allows(&c.write, prefix),
            Grant::Nothing => false,
        }
    }

    /// Whether the client may read series with this prefix.
    pub fn may_read(&self, prefix: &str) -> bool {
        match self {
            Grant::All => true,
            Grant::Limited(c) => allows(&c.read, prefix),
            Grant::Nothing => false,
        }
    }

    /// Whether the client may read any prefix at all (a `read: []` entry
    /// may not: its reads are refused before they are parsed).
    pub fn may_read_some(&self) -> bool {
        match self {
            Grant::All => true,
            Grant::Limited(c) => !c.read.is_empty(),
            Grant::Nothing => false,
        }
    }

    /// Whether the client may use the admin routes.
    pub fn is_admin(&self) -> bool {
        match self {
            Grant::All => true,
            Grant::Limited(c) => c.admin,
            Grant::Nothing => false,
        }
    }
}

/// The `clients:` permissions shared by every connection, swapped whole
/// on reload.
#[derive(Debug)]
pub struct SharedAccess {
    current: RwLock<Arc<Access>>,
    /// Bumped by every [`SharedAccess::set`], so a [`ConnectionGrant`]
    /// knows when to look its grant up again.
    generation: AtomicU64,
}

impl SharedAccess {
    /// Starts with `access`.
    pub fn new(access: Access) -> SharedAccess {
        SharedAccess {
            current: RwLock::new(Arc::new(access)),
            generation: AtomicU64::new(0),
        }
    }

    /// The permissions in force now.
    pub fn current(&self) -> Arc<Access> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The grant of a peer under the permissions in force now.
    pub fn grant(&self, name: Option<&str>) -> Grant {
        self.current().grant(name)
    }

    /// Replaces the permissions (SIGHUP); open connections follow on their
    /// next request or read.
    pub fn set(&self, access: Access) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(access);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// The grant of one long-lived connection, looked up again only after a
/// reload (an atomic load per use otherwise).
#[derive(Debug)]
pub struct ConnectionGrant {
    access: Arc<SharedAccess>,
    name: Option<String>,
    generation: u64,
    grant: Grant,
}

impl ConnectionGrant {
    /// The grant of the peer named `name` (certificate common name).
    pub fn new(access: Arc<SharedAccess>, name: Option<String>) -> ConnectionGrant {
        let generation = access.generation.load(Ordering::Acquire);
        let grant = access.grant(name.as_deref());
        ConnectionGrant {
            access,
            name,
            generation,
            grant,
        }
    }

    /// The grant under the permissions in force now.
    pub fn current(&mut self) -> &Grant {
        let generation = self.access.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            self.grant = self.access.grant(self.name.as_deref());
        }
        &self.grant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants() {
        let clients = [ClientSettings {
            name: "agent-7".into(),
            write: vec!["traffic".into()],
            read: vec!["*".into()],
            admin: false,
        }];
        let access = Access::new(Some(&clients));
        let agent = access.grant(Some("agent-7"));
        assert!(agent.may_write("traffic") && !agent.may_write("load"));
        assert!(agent.may_read("load") && !agent.is_admin());
        assert!(!access.grant(Some("stranger")).may_read("traffic"));
        let reads_nothing = Access::new(Some(&[ClientSettings {
            name: "writer".into(),
            write: vec!["*".into()],
            read: vec![],
            admin: true,
        }]));
        let cases = [
            ("listed with read: [*]", agent.clone(), true),
            ("not listed", access.grant(Some("stranger")), false),
            (
                "listed with read: []",
                reads_nothing.grant(Some("writer")),
                false,
            ),
            ("no clients: list", Access::new(None).grant(None), true),
        ];
        for (name, grant, want) in cases {
            assert_eq!(grant.may_read_some(), want, "case {name}");
        }
        assert!(Access::new(None).grant(None).is_admin());
    }

    #[test]
    fn a_connection_grant_follows_the_reload() {
        let listed = |name: &str| ClientSettings {
            name: name.into(),
            write: vec!["*".into()],
            read: vec!["*".into()],
            admin: false,
        };
        let shared = Arc::new(SharedAccess::new(Access::new(Some(&[listed("agent-7")]))));
        let mut conn = ConnectionGrant::new(shared.clone(), Some("agent-7".into()));
        assert!(conn.current().may_write("traffic"), "listed: may write");
        shared.set(Access::new(Some(&[listed("client")])));
        assert!(
            matches!(conn.current(), Grant::Nothing),
            "removed by the reload: nothing"
        );
        shared.set(Access::new(None));
        assert!(conn.current().is_admin(), "no list any more: everything");
    }
}
