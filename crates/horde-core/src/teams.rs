//! Teams and messages to workers: who may create, change or delete them, what a team's figures
//! are, and which messages a listing or a pop shows.
//!
//! A team's figures are summed from its current workers each time they are shown rather than
//! kept in counters of their own (the public horde adds each job to its team's counters): a
//! worker that leaves takes its figures with it, and nothing is written per job. Pure: the
//! caller passes the time and the members as the registry has them.

use crate::accounts::User;
use crate::Refusal;
use horde_api::teams::{TeamDetails, TeamModel, TeamWorker, Validity};
use horde_api::Rc;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A stored team.
#[derive(Debug, Clone, PartialEq)]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    pub info: Option<String>,
    pub owner_id: i64,
    pub created: i64,
}

/// A stored message to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerMessage {
    pub id: Uuid,
    /// The worker it is for; `None` for a moderator's message to no worker in particular (listed,
    /// never popped).
    pub worker_id: Option<Uuid>,
    /// Its author.
    pub user_id: i64,
    pub message: String,
    pub origin: Option<String>,
    /// Unix seconds after which it is no longer shown to the worker.
    pub expiry: i64,
    pub created: i64,
}

impl WorkerMessage {
    /// Whether it is still shown to its worker at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.expiry > now
    }

    /// Whether `validity` lists it at `now`.
    pub fn listed_as(&self, validity: Validity, now: i64) -> bool {
        match validity {
            Validity::Active => self.is_active(now),
            Validity::Expired => !self.is_active(now),
            Validity::All => true,
        }
    }
}

/// Why a team or message change is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamRefusal {
    /// Only trusted users create teams.
    Untrusted,
    /// Only a team's creator or a moderator changes or deletes it.
    NotTeamOwner,
    /// Only a worker's owner or a moderator deletes it or moves it between teams.
    NotWorkerOwner,
    /// Users who are not moderators write only to their own workers.
    OnlyOwnWorkers,
    /// Only a message's author or a moderator deletes it.
    NotAuthor,
}

impl Refusal for TeamRefusal {
    fn rc(&self) -> Rc {
        match self {
            TeamRefusal::Untrusted => Rc::UntrustedTeamCreation,
            TeamRefusal::NotTeamOwner | TeamRefusal::NotAuthor => Rc::NotOwner,
            TeamRefusal::NotWorkerOwner => Rc::NotOwner,
            TeamRefusal::OnlyOwnWorkers => Rc::MessagesOnlyOwnWorkers,
        }
    }
    fn message(&self) -> String {
        match self {
            TeamRefusal::Untrusted => "Only trusted users can create teams.",
            TeamRefusal::NotTeamOwner => {
                "Only the creator of this team or a moderator can change or delete it."
            }
            TeamRefusal::NotWorkerOwner => {
                "Only the owner of this worker or a moderator can do this."
            }
            TeamRefusal::OnlyOwnWorkers => "You can only send messages to your own workers.",
            TeamRefusal::NotAuthor => {
                "Only the author of this message or a moderator can delete it."
            }
        }
        .into()
    }
}

/// `user` may create a team: trusted users only (anonymous is refused before, as everywhere).
pub fn check_create_team(user: &User) -> Result<(), TeamRefusal> {
    if !user.trusted {
        return Err(TeamRefusal::Untrusted);
    }
    Ok(())
}

/// `user` may change or delete `team`: its creator or a moderator.
pub fn check_change_team(user: &User, team: &Team) -> Result<(), TeamRefusal> {
    if team.owner_id != user.id && !user.moderator {
        return Err(TeamRefusal::NotTeamOwner);
    }
    Ok(())
}

/// `user` may delete, or move between teams, a worker owned by `owner_id`.
pub fn check_change_worker(user: &User, owner_id: i64) -> Result<(), TeamRefusal> {
    if owner_id != user.id && !user.moderator {
        return Err(TeamRefusal::NotWorkerOwner);
    }
    Ok(())
}

/// `user` may write to a worker owned by `owner_id` (`None`: to no worker in particular).
pub fn check_post_message(user: &User, owner_id: Option<i64>) -> Result<(), TeamRefusal> {
    if user.moderator || owner_id == Some(user.id) {
        return Ok(());
    }
    Err(TeamRefusal::OnlyOwnWorkers)
}

/// `user` may delete `message`: its author or a moderator.
pub fn check_delete_message(user: &User, message: &WorkerMessage) -> Result<(), TeamRefusal> {
    if message.user_id != user.id && !user.moderator {
        return Err(TeamRefusal::NotAuthor);
    }
    Ok(())
}

/// Who a message says it is from: a moderator's chosen origin (or their alias); anyone
/// else's is their alias, whatever they asked for.
pub fn origin_of(user: &User, asked: Option<&str>) -> String {
    match asked {
        Some(origin) if user.moderator => origin.to_string(),
        _ => user.alias(),
    }
}

/// Whose messages a listing shows: a moderator's choice (everyone's when none); anyone
/// else's own, whatever they asked for.
pub fn listed_author(user: &User, asked: Option<i64>) -> Option<i64> {
    if user.moderator {
        asked
    } else {
        Some(user.id)
    }
}

/// A team's worker as its figures need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: Uuid,
    pub name: String,
    pub online: bool,
    /// An alchemist's speed is not counted in the team's performance (as on the public horde).
    pub alchemist: bool,
    pub fulfilments: u64,
    /// Kudos earned by its jobs.
    pub kudos: f64,
    pub megapixelsteps: f64,
    pub uptime: u64,
    /// Megapixelsteps (or tokens) a second.
    pub speed: f64,
    pub models: Vec<String>,
}

/// `team`'s details, its figures summed over `members`; `creator` is its creator's alias.
pub fn team_details(team: &Team, creator: String, members: &[Member]) -> TeamDetails {
    let speeds: Vec<f64> = members
        .iter()
        .filter(|m| m.online && !m.alchemist)
        .map(|m| m.speed)
        .collect();
    let total: f64 = speeds.iter().sum();
    let average = if speeds.is_empty() {
        0.0
    } else {
        total / speeds.len() as f64
    };
    TeamDetails {
        name: team.name.clone(),
        id: team.id.to_string(),
        creator,
        info: team.info.clone(),
        contributions: round_to(members.iter().map(|m| m.megapixelsteps).sum(), 2),
        requests_fulfilled: members.iter().map(|m| m.fulfilments).sum(),
        kudos: round_to(members.iter().map(|m| m.kudos).sum(), 2),
        performance: round_to(average, 1),
        speed: round_to(total, 1),
        uptime: members.iter().map(|m| m.uptime).sum(),
        worker_count: members.len() as u32,
        workers: members
            .iter()
            .map(|m| TeamWorker {
                id: m.id.to_string(),
                name: m.name.clone(),
                online: m.online,
            })
            .collect(),
        models: model_counts(members),
    }
}

/// Each model the members serve, with how many serve it, by name.
fn model_counts(members: &[Member]) -> Vec<TeamModel> {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for model in members.iter().flat_map(|m| &m.models) {
        *counts.entry(model).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(name, count)| TeamModel {
            name: name.to_string(),
            count,
        })
        .collect()
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, trusted: bool, moderator: bool) -> User {
        User {
            id,
            username: format!("u{id}"),
            trusted,
            moderator,
            ..User::default()
        }
    }

    fn team(owner_id: i64) -> Team {
        Team {
            id: Uuid::from_u128(7),
            name: "team".into(),
            info: None,
            owner_id,
            created: 0,
        }
    }

    fn member(n: u8, online: bool, alchemist: bool, speed: f64, models: &[&str]) -> Member {
        Member {
            id: Uuid::from_u128(u128::from(n)),
            name: format!("w{n}"),
            online,
            alchemist,
            fulfilments: u64::from(n) * 10,
            kudos: f64::from(n) * 1.5,
            megapixelsteps: f64::from(n) * 100.25,
            uptime: u64::from(n) * 600,
            speed,
            models: models.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn only_trusted_users_create_and_only_creators_or_moderators_change() {
        assert_eq!(
            check_create_team(&user(1, false, true)),
            Err(TeamRefusal::Untrusted)
        );
        assert!(check_create_team(&user(1, true, false)).is_ok());
        let t = team(5);
        assert!(check_change_team(&user(5, false, false), &t).is_ok());
        assert!(check_change_team(&user(6, false, true), &t).is_ok());
        assert_eq!(
            check_change_team(&user(6, true, false), &t),
            Err(TeamRefusal::NotTeamOwner)
        );
        assert_eq!(TeamRefusal::Untrusted.rc(), Rc::UntrustedTeamCreation);
    }

    #[test]
    fn owners_write_to_their_own_workers_under_their_alias_and_moderators_anywhere() {
        let owner = user(3, false, false);
        let moderator = user(9, false, true);
        assert!(check_post_message(&owner, Some(3)).is_ok());
        assert_eq!(
            check_post_message(&owner, Some(4)),
            Err(TeamRefusal::OnlyOwnWorkers)
        );
        assert_eq!(
            check_post_message(&owner, None),
            Err(TeamRefusal::OnlyOwnWorkers)
        );
        assert!(check_post_message(&moderator, Some(4)).is_ok());
        assert!(check_post_message(&moderator, None).is_ok());
        assert_eq!(origin_of(&owner, Some("the horde")), "u3#3");
        assert_eq!(origin_of(&moderator, Some("the horde")), "the horde");
        assert_eq!(origin_of(&moderator, None), "u9#9");
        assert_eq!(listed_author(&owner, Some(9)), Some(3));
        assert_eq!(listed_author(&moderator, Some(3)), Some(3));
        assert_eq!(listed_author(&moderator, None), None);
    }

    #[test]
    fn a_message_is_active_until_its_expiry_and_listed_by_validity() {
        let message = WorkerMessage {
            id: Uuid::from_u128(1),
            worker_id: None,
            user_id: 1,
            message: "m".into(),
            origin: None,
            expiry: 100,
            created: 0,
        };
        assert!(message.is_active(99) && !message.is_active(100));
        assert!(message.listed_as(Validity::Active, 99));
        assert!(!message.listed_as(Validity::Expired, 99));
        assert!(message.listed_as(Validity::Expired, 100));
        assert!(message.listed_as(Validity::All, 100) && message.listed_as(Validity::All, 0));
        assert!(check_delete_message(&user(1, false, false), &message).is_ok());
        assert_eq!(
            check_delete_message(&user(2, true, false), &message),
            Err(TeamRefusal::NotAuthor)
        );
    }

    #[test]
    fn a_team_sums_its_workers_and_averages_the_speed_of_its_online_generators() {
        let members = [
            member(1, true, false, 2.0, &["a", "b"]),
            member(2, true, false, 4.0, &["b"]),
            member(3, false, false, 100.0, &["b"]),
            member(4, true, true, 50.0, &["caption"]),
        ];
        let details = team_details(&team(1), "c#1".into(), &members);
        assert_eq!(details.requests_fulfilled, 100);
        assert_eq!(details.kudos, 15.0);
        assert_eq!(details.contributions, 1002.5);
        assert_eq!(details.uptime, 6000);
        assert_eq!(details.worker_count, 4);
        // Online and not an alchemist: workers 1 and 2.
        assert_eq!((details.performance, details.speed), (3.0, 6.0));
        let models: Vec<(&str, u32)> = details
            .models
            .iter()
            .map(|m| (m.name.as_str(), m.count))
            .collect();
        assert_eq!(models, [("a", 1), ("b", 3), ("caption", 1)]);
        assert_eq!(
            details.workers.iter().filter(|w| w.online).count(),
            3,
            "{details:?}"
        );
        let empty = team_details(&team(1), "c#1".into(), &[]);
        assert_eq!((empty.performance, empty.worker_count), (0.0, 0));
    }
}
