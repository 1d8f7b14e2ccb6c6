//! The rules between users: who may move kudos to whom, who may change which of a user's
//! settings, and how many workers an owner may run. Each refusal carries the public horde's
//! `rc` and message ([`Refusal`]).

use crate::accounts::User;
use crate::Refusal;
use horde_api::user::ModifyUser;
use horde_api::Rc;

/// The minimum time, in seconds, before kudos may flow back the way they came (the public
/// horde's guard against ping-pong transfers).
pub const REVERSE_TRANSFER_SECS: i64 = 60;

/// Untrusted users may own at most this many workers (the public horde refuses a new one when
/// more than 3 exist).
pub const MAX_WORKERS_UNTRUSTED: usize = 4;
/// Trusted users may own at most this many workers.
pub const MAX_WORKERS_TRUSTED: usize = 21;

/// Concurrency of education accounts (the public horde raises it to 200).
pub const EDUCATION_CONCURRENCY: u32 = 200;

/// Why a kudos transfer was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum TransferRefusal {
    FromAnonymous,
    ToAnonymous,
    ToSelf,
    SenderFlagged,
    /// An education account sends.
    SenderEducation,
    ReceiverFlagged,
    Negative,
    /// Zero, or not a number.
    NotPositive,
    /// More than the sender may give: their balance above their floor.
    NotEnough {
        transferable: f64,
        floor: f64,
    },
    /// The receiver sent kudos to the sender less than [`REVERSE_TRANSFER_SECS`] ago.
    TooSoonBack,
}

impl Refusal for TransferRefusal {
    fn rc(&self) -> Rc {
        match self {
            TransferRefusal::FromAnonymous => Rc::KudosTransferFromAnon,
            TransferRefusal::ToAnonymous => Rc::KudosTransferToAnon,
            TransferRefusal::ToSelf => Rc::KudosTransferToSelf,
            TransferRefusal::SenderFlagged => Rc::SourceAccountFlagged,
            TransferRefusal::SenderEducation => Rc::EducationCannotSendKudos,
            TransferRefusal::ReceiverFlagged => Rc::TargetAccountFlagged,
            TransferRefusal::Negative => Rc::NegativeKudosTransfer,
            TransferRefusal::NotPositive => Rc::InvalidKudosTransferAmount,
            TransferRefusal::NotEnough { .. } => Rc::KudosTransferNotEnough,
            TransferRefusal::TooSoonBack => Rc::TooFastKudosTransfers,
        }
    }

    fn message(&self) -> String {
        match self {
            TransferRefusal::FromAnonymous => "The anonymous user cannot transfer kudos.".into(),
            TransferRefusal::ToAnonymous => "Kudos cannot be sent to the anonymous user.".into(),
            TransferRefusal::ToSelf => "You cannot send kudos to yourself.".into(),
            TransferRefusal::SenderFlagged => {
                "Your account is flagged and cannot send kudos.".into()
            }
            TransferRefusal::SenderEducation => "Education accounts cannot send kudos.".into(),
            TransferRefusal::ReceiverFlagged => {
                "The target account is flagged and cannot receive kudos.".into()
            }
            TransferRefusal::Negative => "Nice try...".into(),
            TransferRefusal::NotPositive => {
                "The amount of kudos to transfer must be positive.".into()
            }
            TransferRefusal::NotEnough {
                transferable,
                floor,
            } => format!(
                "Not enough kudos: you can transfer at most {transferable:.2} (your balance above {floor})."
            ),
            TransferRefusal::TooSoonBack => "This user transferred kudos to you within the last minute; wait before sending some back.".into(),
        }
    }
}

/// The public horde's transfer rules: `amount` from `sender` to `receiver` at `now`, where
/// `last_reverse_transfer` is when `receiver` last sent kudos to `sender`, if ever.
pub fn check_transfer(
    sender: &User,
    receiver: &User,
    amount: f64,
    last_reverse_transfer: Option<i64>,
    now: i64,
) -> Result<(), TransferRefusal> {
    if sender.is_anonymous() {
        return Err(TransferRefusal::FromAnonymous);
    }
    if receiver.is_anonymous() {
        return Err(TransferRefusal::ToAnonymous);
    }
    if receiver.id == sender.id {
        return Err(TransferRefusal::ToSelf);
    }
    if sender.flagged {
        return Err(TransferRefusal::SenderFlagged);
    }
    if sender.education {
        return Err(TransferRefusal::SenderEducation);
    }
    if receiver.flagged {
        return Err(TransferRefusal::ReceiverFlagged);
    }
    if amount < 0.0 {
        return Err(TransferRefusal::Negative);
    }
    if amount == 0.0 || !amount.is_finite() {
        return Err(TransferRefusal::NotPositive);
    }
    if amount > sender.transferable_kudos() {
        return Err(TransferRefusal::NotEnough {
            transferable: sender.transferable_kudos(),
            floor: sender.min_kudos(),
        });
    }
    if last_reverse_transfer.is_some_and(|at| now - at < REVERSE_TRANSFER_SECS) {
        return Err(TransferRefusal::TooSoonBack);
    }
    Ok(())
}

/// `change` applied to `user`, once [`check_user_change`] allowed it: a moderator is trusted,
/// and an education account gets at least [`EDUCATION_CONCURRENCY`] (the public horde's rule;
/// a concurrency set with it wins).
pub fn apply_user_change(user: &mut User, change: &ModifyUser) {
    let set = |field: &mut bool, value: Option<bool>| {
        if let Some(v) = value {
            *field = v;
        }
    };
    set(&mut user.moderator, change.moderator);
    set(&mut user.trusted, change.trusted);
    set(&mut user.flagged, change.flagged);
    set(&mut user.customizer, change.customizer);
    set(&mut user.vpn, change.vpn);
    set(&mut user.service, change.service);
    set(&mut user.education, change.education);
    set(&mut user.public_workers, change.public_workers);
    if user.moderator {
        user.trusted = true;
    }
    if change.education == Some(true) {
        user.concurrency = user.concurrency.max(EDUCATION_CONCURRENCY);
    }
    if let Some(c) = change.concurrency {
        user.concurrency = c;
    }
    if let Some(w) = change.worker_invited {
        user.worker_invited = w;
    }
    if let Some(name) = &change.username {
        user.username = name.clone();
    }
}

/// Why a change of a user's settings was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeRefusal {
    /// Kudos and the moderator role: administrators only.
    NotAdmin,
    /// Roles and limits: moderators only.
    NotModerator,
    /// Name and profile: the user themself or a moderator.
    NotSelfOrModerator,
}

impl Refusal for ChangeRefusal {
    fn rc(&self) -> Rc {
        match self {
            ChangeRefusal::NotAdmin => Rc::NotAdmin,
            ChangeRefusal::NotModerator | ChangeRefusal::NotSelfOrModerator => Rc::NotModerator,
        }
    }

    fn message(&self) -> String {
        match self {
            ChangeRefusal::NotAdmin => "Only an administrator can change kudos or moderators.",
            ChangeRefusal::NotModerator => "Only a moderator can change roles and limits.",
            ChangeRefusal::NotSelfOrModerator => {
                "Only the user themself or a moderator can change this."
            }
        }
        .into()
    }
}

/// Who may change what (horde-api.md §7): `caller` (an administrator of this horde when
/// `caller_is_admin`) changing `target` by `change`.
pub fn check_user_change(
    caller: &User,
    caller_is_admin: bool,
    target: &User,
    change: &ModifyUser,
) -> Result<(), ChangeRefusal> {
    let moderator = caller.moderator || caller_is_admin;
    if (change.kudos.is_some() || change.moderator.is_some()) && !caller_is_admin {
        return Err(ChangeRefusal::NotAdmin);
    }
    let moderator_fields = change.concurrency.is_some()
        || change.worker_invited.is_some()
        || change.trusted.is_some()
        || change.flagged.is_some()
        || change.customizer.is_some()
        || change.vpn.is_some()
        || change.service.is_some()
        || change.education.is_some()
        || change.reset_suspicion.is_some()
        || change.tier.is_some();
    if moderator_fields && !moderator {
        return Err(ChangeRefusal::NotModerator);
    }
    let own_fields = change.username.is_some() || change.public_workers.is_some();
    if own_fields && caller.id != target.id && !moderator {
        return Err(ChangeRefusal::NotSelfOrModerator);
    }
    Ok(())
}

/// The owner already runs as many workers as their tier (or a moderator's invitation) allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyWorkers {
    pub limit: usize,
}

impl Refusal for TooManyWorkers {
    fn rc(&self) -> Rc {
        Rc::TooManyWorkers
    }

    fn message(&self) -> String {
        format!("You have reached the maximum of {} workers.", self.limit)
    }
}

/// Whether `owner`, who has `owned` workers, may register another.
pub fn check_new_worker(owner: &User, owned: usize) -> Result<(), TooManyWorkers> {
    // A moderator may invite an owner to run more workers than their tier allows.
    let limit = if owner.trusted {
        MAX_WORKERS_TRUSTED
    } else {
        MAX_WORKERS_UNTRUSTED
    }
    .max(owner.worker_invited as usize);
    if owned >= limit {
        return Err(TooManyWorkers { limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, kudos: f64) -> User {
        User {
            id,
            kudos,
            ..User::default()
        }
    }

    #[test]
    fn transfers_follow_the_public_hordes_rules() {
        let (alice, bob) = (user(2, 100.0), user(3, 0.0));
        assert_eq!(check_transfer(&alice, &bob, 10.0, None, 1000), Ok(()));
        assert_eq!(
            check_transfer(&user(0, 100.0), &bob, 10.0, None, 1000),
            Err(TransferRefusal::FromAnonymous)
        );
        assert_eq!(
            check_transfer(&alice, &alice, 10.0, None, 1000),
            Err(TransferRefusal::ToSelf)
        );
        assert_eq!(
            check_transfer(&alice, &bob, -1.0, None, 1000)
                .unwrap_err()
                .rc(),
            Rc::NegativeKudosTransfer
        );
        assert_eq!(
            check_transfer(&alice, &bob, f64::NAN, None, 1000),
            Err(TransferRefusal::NotPositive)
        );
        assert!(matches!(
            check_transfer(&alice, &bob, 1000.0, None, 1000),
            Err(TransferRefusal::NotEnough { .. })
        ));
        assert_eq!(
            check_transfer(&alice, &bob, 10.0, Some(1000 - 59), 1000),
            Err(TransferRefusal::TooSoonBack)
        );
        assert_eq!(
            check_transfer(&alice, &bob, 10.0, Some(1000 - 60), 1000),
            Ok(())
        );
        let school = User {
            education: true,
            ..alice.clone()
        };
        let refusal = check_transfer(&school, &bob, 10.0, None, 1000).unwrap_err();
        assert_eq!(refusal.rc(), Rc::EducationCannotSendKudos);
        assert_eq!(
            check_transfer(&bob, &school, 0.0, None, 1000).unwrap_err(),
            TransferRefusal::NotPositive,
            "an education account may receive"
        );
    }

    #[test]
    fn kudos_need_an_administrator_and_roles_a_moderator() {
        let (caller, target) = (user(2, 0.0), user(3, 0.0));
        let kudos = ModifyUser {
            kudos: Some(5.0),
            ..ModifyUser::default()
        };
        assert_eq!(
            check_user_change(&caller, false, &target, &kudos),
            Err(ChangeRefusal::NotAdmin)
        );
        assert_eq!(check_user_change(&caller, true, &target, &kudos), Ok(()));
        let trust = ModifyUser {
            trusted: Some(true),
            ..ModifyUser::default()
        };
        assert_eq!(
            check_user_change(&caller, false, &target, &trust),
            Err(ChangeRefusal::NotModerator)
        );
        let moderator = User {
            moderator: true,
            ..caller.clone()
        };
        assert_eq!(
            check_user_change(&moderator, false, &target, &trust),
            Ok(())
        );
        let name = ModifyUser {
            username: Some("new".into()),
            ..ModifyUser::default()
        };
        assert_eq!(check_user_change(&target, false, &target, &name), Ok(()));
        assert_eq!(
            check_user_change(&caller, false, &target, &name),
            Err(ChangeRefusal::NotSelfOrModerator)
        );
    }

    #[test]
    fn an_owner_runs_as_many_workers_as_their_tier_or_invitation_allows() {
        let mut owner = user(2, 0.0);
        assert_eq!(check_new_worker(&owner, 3), Ok(()));
        assert_eq!(
            check_new_worker(&owner, MAX_WORKERS_UNTRUSTED),
            Err(TooManyWorkers {
                limit: MAX_WORKERS_UNTRUSTED
            })
        );
        owner.worker_invited = 10;
        assert_eq!(check_new_worker(&owner, 9), Ok(()));
        owner.trusted = true;
        assert_eq!(check_new_worker(&owner, 20), Ok(()));
        assert!(check_new_worker(&owner, MAX_WORKERS_TRUSTED).is_err());
    }
}
