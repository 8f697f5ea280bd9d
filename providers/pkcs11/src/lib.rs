//! `[signing] backend = "pkcs11"`: Ferry's signing keys in an HSM, reached through the
//! vendor's PKCS#11 module (SoftHSM2, a network HSM's client library, a cloud HSM's).
//!
//! The module is loaded and initialized once per process; Ferry logs in as the token's
//! user with the PIN from `pin_file` and keeps one session open so the login lasts.
//! Each signature takes a session from a small pool (PKCS#11 sessions are not for
//! concurrent use) on a blocking thread: `CKM_SHA256_RSA_PKCS` for RSA keys, `CKM_ECDSA`
//! over the SHA-256 digest for P-256 keys (whose `r || s` output is already the JWS form).
//! Ferry reads the public key (`CKA_MODULUS` / `CKA_PUBLIC_EXPONENT`, `CKA_EC_POINT`)
//! and never asks for the private one; a private key the token would let leave
//! (`CKA_EXTRACTABLE` true, or `CKA_SENSITIVE` false) is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use ferry_provider_api::{KeyAlgorithm, KeyFacts, ManagedKey, Secret, SignError, spki};

const BACKEND: &str = "pkcs11";
/// Sessions kept open for reuse, per token.
const IDLE_SESSIONS: usize = 16;

/// Initialized modules by path: `C_Initialize` may be called once per process, and a
/// reload that opens the same module again reuses it.
fn modules() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    MODULES.get_or_init(Default::default)
}

fn module(path: &Path) -> Result<Pkcs11, String> {
    let mut modules = modules()
        .lock()
        .map_err(|_| "the PKCS#11 module registry is poisoned".to_owned())?;
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    let ctx = Pkcs11::new(path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("{}: C_Initialize: {}", path.display(), short(&e)))?;
    modules.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

/// A PKCS#11 error as its return value's name (`PinIncorrect`, `DeviceError`), never
/// the long text; the caller names the function.
fn short(e: &Error) -> String {
    match e {
        Error::Pkcs11(rv, _) => format!("{rv:?}"),
        other => other.to_string(),
    }
}

/// Whether an error means the token or its session is gone (worth a new session and a
/// 503) rather than a refusal.
fn unavailable(e: &Error) -> bool {
    matches!(
        e,
        Error::Pkcs11(
            RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::DeviceRemoved
                | RvError::SessionClosed
                | RvError::SessionHandleInvalid
                | RvError::SessionCount
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::FunctionFailed
                | RvError::GeneralError
                | RvError::HostMemory,
            _
        )
    )
}

/// One logged-in token and its idle sessions.
struct Token {
    ctx: Pkcs11,
    slot: Slot,
    pin: Secret,
    /// Kept open for the process's life: PKCS#11 logs the application in per token, and
    /// the login ends when its last session closes.
    _anchor: Mutex<Session>,
    idle: Mutex<Vec<Session>>,
}

impl Token {
    fn open(ctx: Pkcs11, label: &str, pin: &Secret) -> Result<Self, String> {
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| format!("C_GetSlotList: {}", short(&e)))?;
        let mut labels = Vec::new();
        let mut found = None;
        for slot in slots {
            let info = ctx
                .get_token_info(slot)
                .map_err(|e| format!("C_GetTokenInfo: {}", short(&e)))?;
            if info.label().trim_end() == label {
                found = Some(slot);
                break;
            }
            labels.push(info.label().trim_end().to_owned());
        }
        let slot = found.ok_or_else(|| {
            format!(
                "no token labelled `{label}` (tokens: {})",
                if labels.is_empty() {
                    "none".to_owned()
                } else {
                    labels.join(", ")
                }
            )
        })?;
        let anchor = ctx
            .open_ro_session(slot)
            .map_err(|e| format!("C_OpenSession: {}", short(&e)))?;
        login(&anchor, pin).map_err(|e| format!("token `{label}`: C_Login: {}", short(&e)))?;
        Ok(Self {
            ctx,
            slot,
            pin: pin.clone(),
            _anchor: Mutex::new(anchor),
            idle: Mutex::new(Vec::new()),
        })
    }

    fn session(&self) -> Result<Session, Error> {
        if let Some(s) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(s);
        }
        let session = self.ctx.open_ro_session(self.slot)?;
        // Logged in already through the anchor, unless the token was reset.
        login(&session, &self.pin)?;
        Ok(session)
    }

    fn give_back(&self, session: Session) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_SESSIONS
        {
            idle.push(session);
        }
    }
}

fn login(session: &Session, pin: &Secret) -> Result<(), Error> {
    let pin = AuthPin::from(pin.expose().to_owned());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One key in the token.
struct Pkcs11Key {
    token: Arc<Token>,
    handle: ObjectHandle,
    facts: KeyFacts,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("reference", &self.facts.reference)
            .field("algorithm", &self.facts.algorithm)
            .finish_non_exhaustive()
    }
}

/// `label` or `id:<hex>`: the attribute that finds the key.
fn selector(reference: &str) -> Result<Attribute, String> {
    match reference.strip_prefix("id:") {
        Some(hex) => {
            let bytes: Result<Vec<u8>, _> = (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|b| u8::from_str_radix(b, 16).ok())
                        .ok_or(())
                })
                .collect();
            match bytes {
                Ok(b) if !b.is_empty() => Ok(Attribute::Id(b)),
                _ => Err(format!("`{reference}`: the id after `id:` must be hex")),
            }
        }
        None => Ok(Attribute::Label(reference.as_bytes().to_vec())),
    }
}

fn find(
    session: &Session,
    class: ObjectClass,
    by: &Attribute,
) -> Result<Vec<ObjectHandle>, String> {
    session
        .find_objects(&[Attribute::Class(class), by.clone()])
        .map_err(|e| format!("C_FindObjects: {}", short(&e)))
}

fn bool_attribute(attrs: &[Attribute], kind: AttributeType) -> Option<bool> {
    attrs.iter().find_map(|a| match (a, kind) {
        (Attribute::Extractable(v), AttributeType::Extractable)
        | (Attribute::Sensitive(v), AttributeType::Sensitive)
        | (Attribute::Sign(v), AttributeType::Sign) => Some(*v),
        _ => None,
    })
}

fn open_key(token: &Arc<Token>, reference: &str) -> Result<Pkcs11Key, String> {
    let by = selector(reference)?;
    let session = token.session().map_err(|e| short(&e))?;
    let private = find(&session, ObjectClass::PRIVATE_KEY, &by)?;
    let handle = match private.as_slice() {
        [one] => *one,
        [] => {
            return Err(format!(
                "`{reference}`: no private key with that label or id"
            ));
        }
        _ => {
            return Err(format!(
                "`{reference}`: {} private keys match; name it by `id:<hex>`",
                private.len()
            ));
        }
    };
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::Sign,
                AttributeType::Extractable,
                AttributeType::Sensitive,
            ],
        )
        .map_err(|e| format!("`{reference}`: C_GetAttributeValue: {}", short(&e)))?;
    if bool_attribute(&attrs, AttributeType::Extractable) != Some(false)
        || bool_attribute(&attrs, AttributeType::Sensitive) != Some(true)
    {
        return Err(format!(
            "`{reference}`: the private key can leave the token (CKA_EXTRACTABLE true or CKA_SENSITIVE false); make one with extractable false and sensitive true"
        ));
    }
    if bool_attribute(&attrs, AttributeType::Sign) != Some(true) {
        return Err(format!(
            "`{reference}`: the private key may not sign (CKA_SIGN false)"
        ));
    }
    let key_type = attrs.iter().find_map(|a| match a {
        Attribute::KeyType(t) => Some(*t),
        _ => None,
    });
    // The public key object beside it (same label or id), else the private key's own
    // public attributes (RSA keeps its modulus and exponent there).
    let public = find(&session, ObjectClass::PUBLIC_KEY, &by)?;
    let source = public.first().copied().unwrap_or(handle);
    let (algorithm, spki) = if key_type == Some(KeyType::RSA) {
        let attrs = session
            .get_attributes(
                source,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .map_err(|e| format!("`{reference}`: C_GetAttributeValue: {}", short(&e)))?;
        let mut n = None;
        let mut e = None;
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        let (Some(n), Some(e)) = (n, e) else {
            return Err(format!(
                "`{reference}`: the token gave no modulus and exponent"
            ));
        };
        (KeyAlgorithm::Rs256, spki::rsa(&n, &e))
    } else if key_type == Some(KeyType::EC) {
        let attrs = session
            .get_attributes(source, &[AttributeType::EcPoint])
            .map_err(|e| format!("`{reference}`: C_GetAttributeValue: {}", short(&e)))?;
        let point = attrs.into_iter().find_map(|a| match a {
            Attribute::EcPoint(v) => Some(v),
            _ => None,
        });
        let Some(point) = point else {
            return Err(format!(
                "`{reference}`: no public key object with CKA_EC_POINT beside the private key"
            ));
        };
        // CKA_EC_POINT is the DER OCTET STRING holding the point (some modules give the
        // bare point).
        let raw = match point.as_slice() {
            [0x04, 65, rest @ ..] if rest.len() == 65 => rest.to_vec(),
            bare => bare.to_vec(),
        };
        if raw.len() != 65 || raw.first() != Some(&0x04) {
            return Err(format!("`{reference}`: not an uncompressed P-256 point"));
        }
        (KeyAlgorithm::Es256, spki::p256(&raw))
    } else {
        return Err(format!("`{reference}`: neither an RSA nor an EC key"));
    };
    token.give_back(session);
    Ok(Pkcs11Key {
        token: Arc::clone(token),
        handle,
        facts: KeyFacts {
            reference: reference.to_owned(),
            algorithm,
            spki,
        },
    })
}

/// Opens `keys` (labels or `id:<hex>`) in the token labelled `token_label` of the module
/// at `module`, logging in with `pin`.
pub fn open(
    module_path: &Path,
    token_label: &str,
    pin: &Secret,
    keys: &[String],
) -> Result<Vec<Arc<dyn ManagedKey>>, String> {
    let ctx = module(module_path)?;
    let token = Arc::new(Token::open(ctx, token_label, pin)?);
    keys.iter()
        .map(|k| open_key(&token, k).map(|k| Arc::new(k) as Arc<dyn ManagedKey>))
        .collect()
}

#[async_trait]
impl ManagedKey for Pkcs11Key {
    fn backend(&self) -> &'static str {
        BACKEND
    }
    fn facts(&self) -> &KeyFacts {
        &self.facts
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let token = Arc::clone(&self.token);
        let handle = self.handle;
        let algorithm = self.facts.algorithm;
        let message = message.to_vec();
        let signed = tokio::task::spawn_blocking(move || {
            let session = token.session()?;
            let result = match algorithm {
                KeyAlgorithm::Rs256 => session.sign(&Mechanism::Sha256RsaPkcs, handle, &message),
                KeyAlgorithm::Es256 => {
                    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &message);
                    session.sign(&Mechanism::Ecdsa, handle, digest.as_ref())
                }
            };
            // A session that failed is not reused.
            if result.is_ok() {
                token.give_back(session);
            }
            result
        })
        .await
        .map_err(|e| SignError::Unavailable {
            backend: BACKEND,
            reason: format!("signing thread: {e}"),
        })?;
        signed.map_err(|e| {
            let reason = format!("C_Sign: {}", short(&e));
            if unavailable(&e) {
                SignError::Unavailable {
                    backend: BACKEND,
                    reason,
                }
            } else {
                SignError::Refused {
                    backend: BACKEND,
                    reason,
                }
            }
        })
    }
}
