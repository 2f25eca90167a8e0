//! Users and the identities (phone, email) that lead to them.

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{decode, encode, flatten, Store, StoreError};
use crate::clock::unix_now;
use crate::domain::{Email, Identity, PhoneNumber, UserId};

/// An account. Created by the first successful verify of a phone or email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub phone: Option<PhoneNumber>,
    pub email: Option<Email>,
    pub display_name: Option<String>,
    pub forward_sms: bool,
    pub forward_email: bool,
    pub created_at: u64,
}

impl Store {
    pub fn user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        self.inner
            .users
            .get(id.as_bytes())?
            .map(|bytes| decode("users", &bytes))
            .transpose()
    }

    /// Whether an account has this id (without reading it).
    pub fn user_exists(&self, id: &UserId) -> Result<bool, StoreError> {
        Ok(self.inner.users.contains_key(id.as_bytes())?)
    }

    pub fn user_id_by_identity(&self, identity: &Identity) -> Result<Option<UserId>, StoreError> {
        Ok(self
            .inner
            .identities
            .get(identity.key().as_bytes())?
            .and_then(|bytes| <[u8; UserId::BYTES]>::try_from(bytes.as_ref()).ok())
            .map(UserId::from_bytes))
    }

    /// The account of `identity`, created if there is none; `true` when it was created.
    /// Atomic: two concurrent first logins of one identity make one account.
    pub fn user_for_identity(&self, identity: &Identity) -> Result<(User, bool), StoreError> {
        let key = identity.key();
        let fresh = User {
            id: UserId::random(),
            phone: match identity {
                Identity::Phone(p) => Some(p.clone()),
                Identity::Email(_) => None,
            },
            email: match identity {
                Identity::Email(e) => Some(e.clone()),
                Identity::Phone(_) => None,
            },
            display_name: None,
            forward_sms: false,
            forward_email: false,
            created_at: unix_now(),
        };
        let result = (&self.inner.identities, &self.inner.users).transaction(|(ids, users)| {
            if let Some(existing) = ids.get(key.as_bytes())? {
                let user = users
                    .get(&existing)?
                    .ok_or_else(|| {
                        ConflictableTransactionError::Abort(StoreError::Corrupt {
                            tree: "identities",
                            detail: format!("{key} points at a missing user"),
                        })
                    })
                    .and_then(|bytes| {
                        decode::<User>("users", &bytes).map_err(ConflictableTransactionError::Abort)
                    })?;
                return Ok((user, false));
            }
            ids.insert(key.as_bytes(), fresh.id.as_bytes().as_slice())?;
            users.insert(fresh.id.as_bytes().as_slice(), encode(&fresh))?;
            Ok((fresh.clone(), true))
        });
        result.map_err(flatten)
    }
}

/// Why an identity could not be added to an account.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("another account owns this phone or email")]
    Taken,
    #[error("no such user")]
    NoUser,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Applies `change` to the user's record and stores it; `None` when there is no such user.
    pub fn update_user(
        &self,
        id: &UserId,
        change: impl Fn(&mut User),
    ) -> Result<Option<User>, StoreError> {
        let mut forwarding = self.inner.forwarding.write().expect("never poisoned");
        let mut updated = None;
        let mut corrupt = None;
        self.inner.users.fetch_and_update(id.as_bytes(), |old| {
            let mut user: User = match decode("users", old?) {
                Ok(user) => user,
                Err(e) => {
                    corrupt = Some(e);
                    return old.map(<[u8]>::to_vec);
                }
            };
            change(&mut user);
            let bytes = encode(&user);
            updated = Some(user);
            Some(bytes)
        })?;
        if let Some(user) = &updated {
            Self::note_channels(&mut forwarding, user);
        }
        match corrupt {
            Some(e) => Err(e),
            None => Ok(updated),
        }
    }

    /// Makes `identity` the user's phone or email (replacing the one it had, which then leads
    /// nowhere), atomically: never two accounts for one phone or email.
    pub fn attach_identity(&self, id: &UserId, identity: &Identity) -> Result<User, AttachError> {
        let key = identity.key();
        let mut forwarding = self.inner.forwarding.write().expect("never poisoned");
        let result = (&self.inner.identities, &self.inner.users).transaction(|(ids, users)| {
            let abort = |e| ConflictableTransactionError::Abort(e);
            if let Some(owner) = ids.get(key.as_bytes())? {
                if owner.as_ref() != id.as_bytes() {
                    return Err(abort(AttachError::Taken));
                }
            }
            let Some(bytes) = users.get(id.as_bytes())? else {
                return Err(abort(AttachError::NoUser));
            };
            let mut user: User =
                decode("users", &bytes).map_err(|e| abort(AttachError::Store(e)))?;
            let previous = match identity {
                Identity::Phone(phone) => user.phone.replace(phone.clone()).map(Identity::Phone),
                Identity::Email(email) => user.email.replace(email.clone()).map(Identity::Email),
            };
            if let Some(previous) = previous.filter(|p| p != identity) {
                ids.remove(previous.key().as_bytes())?;
            }
            ids.insert(key.as_bytes(), id.as_bytes().as_slice())?;
            users.insert(id.as_bytes().as_slice(), encode(&user))?;
            Ok(user)
        });
        let user = result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => AttachError::Store(StoreError::Sled(e)),
        })?;
        Self::note_channels(&mut forwarding, &user);
        Ok(user)
    }
}
