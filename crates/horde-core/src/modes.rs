//! The horde's administration rules (issue 29, points 4 and 5), as the public horde has them:
//! who may change which mode, what maintenance and invite-only mode refuse, who may delete an
//! account and when its data is wiped, and who may award kudos.
//!
//! They are pure so that each rule is tested here, directly; the server reads the modes (a
//! short-lived copy of the database's row, shared by every coordinator) and the users, and
//! passes them in.

use crate::accounts::User;
use crate::Refusal;
use horde_api::modes::{HordeModes, HordeModesChange};
use horde_api::Rc;

/// A deleted account's data is wiped by a second deletion at least this long after the first
/// (the public horde's 30 days of inactivity: a deleted account can do nothing, so it has been
/// inactive since its deletion).
pub const WIPE_AFTER_SECS: i64 = 30 * 24 * 3600;

/// The horde's modes, as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modes {
    /// No new requests of any kind; jobs handed out still finish.
    pub maintenance: bool,
    /// No new workers, except for users invited to have more (`worker_invited`).
    pub invite_only: bool,
    /// Raid mode: shown to moderators only.
    pub raid: bool,
}

impl Modes {
    /// The modes as `GET /status/modes` shows them: raid mode to moderators only.
    pub fn shown(&self, to_moderator: bool) -> HordeModes {
        HordeModes {
            maintenance_mode: self.maintenance,
            invite_only_mode: self.invite_only,
            raid_mode: to_moderator.then_some(self.raid),
        }
    }

    /// These modes with `change` applied.
    pub fn changed(self, change: &HordeModesChange) -> Modes {
        Modes {
            maintenance: change.maintenance_mode.unwrap_or(self.maintenance),
            invite_only: change.invite_only_mode.unwrap_or(self.invite_only),
            raid: change.raid_mode.unwrap_or(self.raid),
        }
    }
}

/// Why a rule of this module refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRefusal {
    /// `PUT /status/modes` named no mode.
    NoModeSelected,
    /// Maintenance mode, or an award: administrators only.
    NotAdmin,
    /// Invite-only and raid mode, or deleting another user: moderators only.
    NotModerator,
    /// A new request while the horde is in maintenance.
    Maintenance,
    /// A new worker in invite-only mode, from a user with `workers` already and no invitation
    /// for more.
    InviteOnly { workers: usize },
    /// Moderators' and the anonymous account cannot be deleted.
    Undeletable,
    /// A second deletion before the wipe is due, `days_left` days early.
    WipeNotDue { days_left: i64 },
    /// An award's receiver is anonymous.
    AwardToAnonymous,
    /// An award's receiver is flagged.
    AwardToFlagged,
}

impl Refusal for AdminRefusal {
    fn rc(&self) -> Rc {
        match self {
            AdminRefusal::NoModeSelected => Rc::NoHordeModSelected,
            AdminRefusal::NotAdmin => Rc::NotAdmin,
            AdminRefusal::NotModerator => Rc::NotModerator,
            AdminRefusal::Maintenance => Rc::MaintenanceMode,
            AdminRefusal::InviteOnly { .. } => Rc::WorkerInviteOnly,
            AdminRefusal::Undeletable | AdminRefusal::WipeNotDue { .. } => Rc::Forbidden,
            AdminRefusal::AwardToAnonymous => Rc::KudosValidationError,
            AdminRefusal::AwardToFlagged => Rc::TargetAccountFlagged,
        }
    }

    fn message(&self) -> String {
        match self {
            AdminRefusal::NoModeSelected => "No mod change selected!".into(),
            AdminRefusal::NotAdmin => "Only an administrator of this horde can do this.".into(),
            AdminRefusal::NotModerator => "Only a moderator can do this.".into(),
            AdminRefusal::Maintenance => {
                "This horde is in maintenance mode: it accepts no new requests. Please try again later.".into()
            }
            AdminRefusal::InviteOnly { workers } => format!(
                "This horde is in worker invite-only mode and your account may not add a worker to the {workers} it has. Please ask a moderator for an invitation."
            ),
            AdminRefusal::Undeletable => {
                "Moderators' accounts and the anonymous account cannot be deleted.".into()
            }
            AdminRefusal::WipeNotDue { days_left } => format!(
                "This account is deleted; its data can be wiped in {days_left} more days."
            ),
            AdminRefusal::AwardToAnonymous => "Cannot award the anonymous user.".into(),
            AdminRefusal::AwardToFlagged => "The target account is flagged.".into(),
        }
    }
}

/// May `caller` (an administrator of this horde when `caller_is_admin`) make `change`? As on
/// the public horde: maintenance needs an administrator, invite-only and raid mode a moderator
/// (an administrator counts as one), and at least one mode must be named.
pub fn check_mode_change(
    caller: &User,
    caller_is_admin: bool,
    change: &HordeModesChange,
) -> Result<(), AdminRefusal> {
    if change.maintenance_mode.is_some() && !caller_is_admin {
        return Err(AdminRefusal::NotAdmin);
    }
    let moderates = caller.moderator || caller_is_admin;
    if (change.invite_only_mode.is_some() || change.raid_mode.is_some()) && !moderates {
        return Err(AdminRefusal::NotModerator);
    }
    if change.is_empty() {
        return Err(AdminRefusal::NoModeSelected);
    }
    Ok(())
}

/// A new request (image, text or interrogation) under `modes`: refused in maintenance.
pub fn check_new_request(modes: &Modes) -> Result<(), AdminRefusal> {
    if modes.maintenance {
        return Err(AdminRefusal::Maintenance);
    }
    Ok(())
}

/// A new worker of `owner`, who has `workers` already, under `modes`: in invite-only mode only
/// while the owner has fewer than `worker_invited` workers (the public horde's rule).
pub fn check_new_worker(modes: &Modes, owner: &User, workers: usize) -> Result<(), AdminRefusal> {
    if modes.invite_only && workers >= owner.worker_invited as usize {
        return Err(AdminRefusal::InviteOnly { workers });
    }
    Ok(())
}

/// What a `DELETE /users/{id}` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The first deletion: the account becomes unusable (403 `DeletedUser`).
    MarkDeleted,
    /// The second, at least [`WIPE_AFTER_SECS`] after the first: the account's personal data,
    /// workers and shared keys are wiped (its ledger stays, anonymous).
    Wipe,
}

/// May `caller` delete `target` at `now`, and what does it do? The user themself or a
/// moderator; never a moderator's account or the anonymous one.
pub fn check_deletion(caller: &User, target: &User, now: i64) -> Result<Deletion, AdminRefusal> {
    if caller.id != target.id && !caller.moderator {
        return Err(AdminRefusal::NotModerator);
    }
    if target.moderator || target.is_anonymous() {
        return Err(AdminRefusal::Undeletable);
    }
    match target.deleted_at {
        None => Ok(Deletion::MarkDeleted),
        Some(at) if now - at >= WIPE_AFTER_SECS => Ok(Deletion::Wipe),
        Some(at) => Err(AdminRefusal::WipeNotDue {
            days_left: (WIPE_AFTER_SECS - (now - at) + 86_399) / 86_400,
        }),
    }
}

/// May an administrator award kudos to `receiver`? Not to the anonymous account or a flagged
/// one (the public horde refuses both).
pub fn check_award(caller_is_admin: bool, receiver: &User) -> Result<(), AdminRefusal> {
    if !caller_is_admin {
        return Err(AdminRefusal::NotAdmin);
    }
    if receiver.is_anonymous() {
        return Err(AdminRefusal::AwardToAnonymous);
    }
    if receiver.flagged {
        return Err(AdminRefusal::AwardToFlagged);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, moderator: bool) -> User {
        User {
            id,
            moderator,
            ..User::default()
        }
    }

    fn change(m: Option<bool>, i: Option<bool>, r: Option<bool>) -> HordeModesChange {
        HordeModesChange {
            maintenance_mode: m,
            invite_only_mode: i,
            raid_mode: r,
        }
    }

    #[test]
    fn maintenance_needs_an_administrator_and_the_others_a_moderator() {
        let (plain, moderator) = (user(2, false), user(3, true));
        let maintenance = change(Some(true), None, None);
        let invite = change(None, Some(true), None);
        let raid = change(None, None, Some(false));
        assert_eq!(
            check_mode_change(&moderator, false, &maintenance),
            Err(AdminRefusal::NotAdmin)
        );
        assert_eq!(check_mode_change(&plain, true, &maintenance), Ok(()));
        for other in [&invite, &raid] {
            assert_eq!(
                check_mode_change(&plain, false, other),
                Err(AdminRefusal::NotModerator)
            );
            assert_eq!(check_mode_change(&moderator, false, other), Ok(()));
            assert_eq!(check_mode_change(&plain, true, other), Ok(()));
        }
        assert_eq!(
            check_mode_change(&moderator, true, &change(None, None, None)),
            Err(AdminRefusal::NoModeSelected)
        );
        assert_eq!(AdminRefusal::NoModeSelected.rc(), Rc::NoHordeModSelected);
    }

    #[test]
    fn a_change_keeps_the_modes_it_does_not_name() {
        let modes = Modes {
            maintenance: true,
            invite_only: false,
            raid: true,
        };
        let after = modes.changed(&change(None, Some(true), None));
        assert_eq!(
            after,
            Modes {
                maintenance: true,
                invite_only: true,
                raid: true
            }
        );
        assert_eq!(after.shown(false).raid_mode, None);
        assert_eq!(after.shown(true).raid_mode, Some(true));
        assert!(after.shown(false).maintenance_mode);
    }

    #[test]
    fn maintenance_refuses_new_requests_with_the_public_rc() {
        assert_eq!(check_new_request(&Modes::default()), Ok(()));
        let refusal = check_new_request(&Modes {
            maintenance: true,
            ..Modes::default()
        })
        .unwrap_err();
        assert_eq!(refusal.rc(), Rc::MaintenanceMode);
        assert_eq!(Rc::MaintenanceMode.status(), 400);
    }

    #[test]
    fn invite_only_admits_a_worker_only_within_the_invitation() {
        let invite_only = Modes {
            invite_only: true,
            ..Modes::default()
        };
        let invited = User {
            worker_invited: 2,
            ..user(2, false)
        };
        assert_eq!(
            check_new_worker(&Modes::default(), &user(2, false), 5),
            Ok(())
        );
        assert_eq!(
            check_new_worker(&invite_only, &user(2, false), 0),
            Err(AdminRefusal::InviteOnly { workers: 0 })
        );
        assert_eq!(check_new_worker(&invite_only, &invited, 1), Ok(()));
        assert_eq!(
            check_new_worker(&invite_only, &invited, 2),
            Err(AdminRefusal::InviteOnly { workers: 2 })
        );
        assert_eq!(AdminRefusal::InviteOnly { workers: 2 }.rc().status(), 403);
    }

    #[test]
    fn an_account_is_deleted_then_wiped_thirty_days_later() {
        let (me, other, moderator) = (user(2, false), user(4, false), user(3, true));
        assert_eq!(check_deletion(&me, &me, 100), Ok(Deletion::MarkDeleted));
        assert_eq!(
            check_deletion(&moderator, &me, 100),
            Ok(Deletion::MarkDeleted)
        );
        assert_eq!(
            check_deletion(&other, &me, 100),
            Err(AdminRefusal::NotModerator)
        );
        assert_eq!(
            check_deletion(&moderator, &moderator, 100),
            Err(AdminRefusal::Undeletable)
        );
        assert_eq!(
            check_deletion(&moderator, &user(0, false), 100),
            Err(AdminRefusal::Undeletable)
        );
        let deleted = User {
            deleted_at: Some(1000),
            ..me
        };
        assert_eq!(
            check_deletion(&moderator, &deleted, 1000 + WIPE_AFTER_SECS - 1),
            Err(AdminRefusal::WipeNotDue { days_left: 1 })
        );
        assert_eq!(
            check_deletion(&moderator, &deleted, 1000),
            Err(AdminRefusal::WipeNotDue { days_left: 30 })
        );
        assert_eq!(
            check_deletion(&moderator, &deleted, 1000 + WIPE_AFTER_SECS),
            Ok(Deletion::Wipe)
        );
    }

    #[test]
    fn only_administrators_award_and_never_to_anonymous_or_flagged() {
        let receiver = user(5, false);
        assert_eq!(check_award(false, &receiver), Err(AdminRefusal::NotAdmin));
        assert_eq!(check_award(true, &receiver), Ok(()));
        assert_eq!(
            check_award(true, &user(0, false)),
            Err(AdminRefusal::AwardToAnonymous)
        );
        let flagged = User {
            flagged: true,
            ..receiver
        };
        assert_eq!(
            check_award(true, &flagged),
            Err(AdminRefusal::AwardToFlagged)
        );
    }
}
