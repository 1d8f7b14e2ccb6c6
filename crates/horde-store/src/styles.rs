//! Styles and collections, with a style's tags, models and examples and a collection's
//! members in their own tables (so a listing filters by tag or model in SQL), and the use of a
//! style: its count and the fee its owner is paid, in one transaction.

use crate::ledger::{Kind, Posting, HORDE_ACCOUNT};
use crate::{flag, get_flag, parse_json, parse_uuid, to_json, Placeholders, Result, Store};
use horde_core::accounts::{forgiven_debit, kudos_floor};
use horde_core::styles::{Collection, Style, StyleExample, StyleKind};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;
use uuid::Uuid;

/// A page of styles: of one kind, public ones, optionally with a tag or a model.
#[derive(Debug, Clone)]
pub struct StyleListing {
    pub kind: StyleKind,
    /// Most used first; otherwise newest first.
    pub popular: bool,
    /// From 1.
    pub page: u32,
    pub per_page: u32,
    pub tag: Option<String>,
    pub model: Option<String>,
}

/// One use of a style by a request: counted, and the fee moved from the requester to the
/// owner (written off below the requester's floor, as an activation fee is).
#[derive(Debug, Clone, Copy)]
pub struct StyleUse {
    pub style_id: Uuid,
    pub collection_id: Option<Uuid>,
    pub requester_id: i64,
    pub owner_id: i64,
    pub fee: f64,
    pub request_id: Uuid,
    pub at: i64,
}

fn kind_of(row: &AnyRow) -> Result<StyleKind> {
    let text: String = row.try_get("kind")?;
    StyleKind::parse(&text).ok_or_else(|| crate::StoreError::Corrupt(format!("style kind {text}")))
}

fn style_from_row(row: &AnyRow) -> Result<Style> {
    Ok(Style {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        kind: kind_of(row)?,
        owner_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        info: row.try_get("info")?,
        prompt: row.try_get("prompt")?,
        params: parse_json(&row.try_get::<String, _>("params")?)?,
        public: get_flag(row, "public")?,
        nsfw: get_flag(row, "nsfw")?,
        tags: vec![],
        models: vec![],
        use_count: row.try_get::<i64, _>("use_count")? as u64,
        created: row.try_get("created")?,
        examples: vec![],
    })
}

fn collection_from_row(row: &AnyRow) -> Result<Collection> {
    Ok(Collection {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        kind: kind_of(row)?,
        owner_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        info: row.try_get("info")?,
        public: get_flag(row, "public")?,
        use_count: row.try_get::<i64, _>("use_count")? as u64,
        created: row.try_get("created")?,
        style_ids: vec![],
    })
}

/// Writes a style's tags and models (after its old ones were deleted).
async fn insert_tags_and_models(conn: &mut sqlx::AnyConnection, s: &Style) -> Result<()> {
    let id = s.id.to_string();
    for tag in &s.tags {
        sqlx::query(
            "INSERT INTO style_tags (style_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(tag)
        .execute(&mut *conn)
        .await?;
    }
    for (position, model) in s.models.iter().enumerate() {
        sqlx::query(
            "INSERT INTO style_models (style_id, model, position) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(model)
        .bind(position as i64)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn insert_members(conn: &mut sqlx::AnyConnection, c: &Collection) -> Result<()> {
    for (position, style_id) in c.style_ids.iter().enumerate() {
        sqlx::query(
            "INSERT INTO style_collection_members (collection_id, style_id, position) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(c.id.to_string())
        .bind(style_id.to_string())
        .bind(position as i64)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl Store {
    pub async fn insert_style(&self, s: &Style) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO styles (id, kind, user_id, name, info, prompt, params, public, nsfw, \
             use_count, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(s.id.to_string())
        .bind(s.kind.as_str())
        .bind(s.owner_id)
        .bind(&s.name)
        .bind(&s.info)
        .bind(&s.prompt)
        .bind(to_json(&s.params))
        .bind(flag(s.public))
        .bind(flag(s.nsfw))
        .bind(s.use_count as i64)
        .bind(s.created)
        .execute(&mut *tx)
        .await?;
        insert_tags_and_models(&mut tx, s).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores the owner-editable fields of a style, its tags and models.
    pub async fn save_style(&self, s: &Style) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "UPDATE styles SET name = $1, info = $2, prompt = $3, params = $4, public = $5, \
             nsfw = $6 WHERE id = $7",
        )
        .bind(&s.name)
        .bind(&s.info)
        .bind(&s.prompt)
        .bind(to_json(&s.params))
        .bind(flag(s.public))
        .bind(flag(s.nsfw))
        .bind(s.id.to_string())
        .execute(&mut *tx)
        .await?;
        for table in ["style_tags", "style_models"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE style_id = $1"))
                .bind(s.id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        insert_tags_and_models(&mut tx, s).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a style with its tags, models, examples and collection memberships.
    pub async fn delete_style(&self, id: Uuid) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for table in [
            "style_tags",
            "style_models",
            "style_examples",
            "style_collection_members",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE style_id = $1"))
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM styles WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn style(&self, id: Uuid) -> Result<Option<Style>> {
        let row = sqlx::query("SELECT * FROM styles WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        self.filled_one(row.as_ref().map(style_from_row).transpose()?)
            .await
    }

    /// The style `name` of `owner_id`; without an owner, the oldest public style of that name.
    pub async fn style_named(&self, owner_id: Option<i64>, name: &str) -> Result<Option<Style>> {
        let row = match owner_id {
            Some(owner) => {
                sqlx::query("SELECT * FROM styles WHERE user_id = $1 AND name = $2")
                    .bind(owner)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(
                    "SELECT * FROM styles WHERE name = $1 AND public = 1 \
                     ORDER BY created, id LIMIT 1",
                )
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        self.filled_one(row.as_ref().map(style_from_row).transpose()?)
            .await
    }

    /// A page of public styles as `listing` asks.
    pub async fn list_styles(&self, listing: &StyleListing) -> Result<Vec<Style>> {
        let mut sql = String::from("SELECT * FROM styles s WHERE s.kind = $1 AND s.public = 1");
        let mut n = 1;
        if listing.tag.is_some() {
            n += 1;
            sql += &format!(
                " AND EXISTS (SELECT 1 FROM style_tags t WHERE t.style_id = s.id AND t.tag = ${n})"
            );
        }
        if listing.model.is_some() {
            n += 1;
            sql += &format!(
                " AND EXISTS (SELECT 1 FROM style_models m WHERE m.style_id = s.id AND m.model = ${n})"
            );
        }
        sql += if listing.popular {
            " ORDER BY s.use_count DESC, s.created DESC, s.id DESC"
        } else {
            " ORDER BY s.created DESC, s.id DESC"
        };
        sql += &format!(" LIMIT ${} OFFSET ${}", n + 1, n + 2);
        let mut query = sqlx::query(&sql).bind(listing.kind.as_str());
        for filter in [&listing.tag, &listing.model].into_iter().flatten() {
            query = query.bind(filter);
        }
        let offset = i64::from(listing.page.saturating_sub(1)) * i64::from(listing.per_page);
        let rows = query
            .bind(i64::from(listing.per_page))
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let styles = rows
            .iter()
            .map(style_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.filled(styles).await
    }

    /// `(id, name, kind)` of a user's styles (only public ones unless `all`), oldest first.
    pub async fn styles_of_user(
        &self,
        user_id: i64,
        all: bool,
    ) -> Result<Vec<(Uuid, String, StyleKind)>> {
        let rows = sqlx::query(
            "SELECT * FROM styles WHERE user_id = $1 AND (public = 1 OR $2 = 1) ORDER BY created, id",
        )
        .bind(user_id)
        .bind(flag(all))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    parse_uuid(&row.try_get::<String, _>("id")?)?,
                    row.try_get("name")?,
                    kind_of(row)?,
                ))
            })
            .collect()
    }

    async fn filled_one(&self, style: Option<Style>) -> Result<Option<Style>> {
        Ok(match style {
            Some(s) => self.filled(vec![s]).await?.pop(),
            None => None,
        })
    }

    /// `styles` with their tags, models (in order) and examples, read in three statements.
    async fn filled(&self, mut styles: Vec<Style>) -> Result<Vec<Style>> {
        if styles.is_empty() {
            return Ok(styles);
        }
        let index: HashMap<String, usize> = styles
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.to_string(), i))
            .collect();
        let ids = Placeholders::new(self.backend).list(styles.len());
        let statements = [
            format!("SELECT style_id, tag FROM style_tags WHERE style_id IN ({ids}) ORDER BY tag"),
            format!("SELECT style_id, model FROM style_models WHERE style_id IN ({ids}) ORDER BY position"),
            format!("SELECT * FROM style_examples WHERE style_id IN ({ids}) ORDER BY created, id"),
        ];
        for (which, sql) in statements.iter().enumerate() {
            let mut query = sqlx::query(sql);
            for s in &styles {
                query = query.bind(s.id.to_string());
            }
            for row in query.fetch_all(&self.pool).await? {
                let style = &mut styles[index[&row.try_get::<String, _>("style_id")?]];
                match which {
                    0 => style.tags.push(row.try_get("tag")?),
                    1 => style.models.push(row.try_get("model")?),
                    _ => style.examples.push(StyleExample {
                        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
                        url: row.try_get("url")?,
                        primary: get_flag(&row, "is_primary")?,
                    }),
                }
            }
        }
        Ok(styles)
    }

    /// Stores a style's examples as they are now (`examples` of `style` replace the stored
    /// ones), in one transaction.
    pub async fn save_examples(&self, style: &Style, now: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM style_examples WHERE style_id = $1")
            .bind(style.id.to_string())
            .execute(&mut *tx)
            .await?;
        for (i, example) in style.examples.iter().enumerate() {
            sqlx::query(
                "INSERT INTO style_examples (id, style_id, url, is_primary, created) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(example.id.to_string())
            .bind(style.id.to_string())
            .bind(&example.url)
            .bind(flag(example.primary))
            .bind(now + i as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn insert_collection(&self, c: &Collection) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO style_collections (id, kind, user_id, name, info, public, use_count, \
             created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(c.id.to_string())
        .bind(c.kind.as_str())
        .bind(c.owner_id)
        .bind(&c.name)
        .bind(&c.info)
        .bind(flag(c.public))
        .bind(c.use_count as i64)
        .bind(c.created)
        .execute(&mut *tx)
        .await?;
        insert_members(&mut tx, c).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn save_collection(&self, c: &Collection) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "UPDATE style_collections SET kind = $1, name = $2, info = $3, public = $4 WHERE id = $5",
        )
        .bind(c.kind.as_str())
        .bind(&c.name)
        .bind(&c.info)
        .bind(flag(c.public))
        .bind(c.id.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM style_collection_members WHERE collection_id = $1")
            .bind(c.id.to_string())
            .execute(&mut *tx)
            .await?;
        insert_members(&mut tx, c).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_collection(&self, id: Uuid) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM style_collection_members WHERE collection_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM style_collections WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn collection(&self, id: Uuid) -> Result<Option<Collection>> {
        let row = sqlx::query("SELECT * FROM style_collections WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        self.with_members(row.as_ref().map(collection_from_row).transpose()?)
            .await
    }

    /// The collection `name` of `owner_id`; without an owner, the oldest public one.
    pub async fn collection_named(
        &self,
        owner_id: Option<i64>,
        name: &str,
    ) -> Result<Option<Collection>> {
        let row = sqlx::query(
            "SELECT * FROM style_collections WHERE name = $1 AND \
             (user_id = $2 OR ($2 IS NULL AND public = 1)) ORDER BY created, id LIMIT 1",
        )
        .bind(name)
        .bind(owner_id)
        .fetch_optional(&self.pool)
        .await?;
        self.with_members(row.as_ref().map(collection_from_row).transpose()?)
            .await
    }

    /// A page of public collections, of one kind or all.
    pub async fn list_collections(
        &self,
        kind: Option<StyleKind>,
        popular: bool,
        page: u32,
        per_page: u32,
    ) -> Result<Vec<Collection>> {
        let order = if popular {
            "use_count DESC, created DESC, id DESC"
        } else {
            "created DESC, id DESC"
        };
        let sql = format!(
            "SELECT * FROM style_collections WHERE public = 1 AND (kind = $1 OR $1 = 'all') \
             ORDER BY {order} LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(&sql)
            .bind(kind.map_or("all", StyleKind::as_str))
            .bind(i64::from(per_page))
            .bind(i64::from(page.saturating_sub(1)) * i64::from(per_page))
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.extend(self.with_members(Some(collection_from_row(row)?)).await?);
        }
        Ok(out)
    }

    async fn with_members(&self, c: Option<Collection>) -> Result<Option<Collection>> {
        let Some(mut c) = c else { return Ok(None) };
        let rows = sqlx::query(
            "SELECT style_id FROM style_collection_members WHERE collection_id = $1 ORDER BY position",
        )
        .bind(c.id.to_string())
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            c.style_ids.push(parse_uuid(&row.try_get::<String, _>(0)?)?);
        }
        Ok(Some(c))
    }

    /// Counts a use of a style (and of the collection it was picked from) and pays its owner
    /// the fee, in one transaction.
    pub async fn record_style_use(&self, u: &StyleUse) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("UPDATE styles SET use_count = use_count + 1 WHERE id = $1")
            .bind(u.style_id.to_string())
            .execute(&mut *tx)
            .await?;
        if let Some(collection) = u.collection_id {
            sqlx::query("UPDATE style_collections SET use_count = use_count + 1 WHERE id = $1")
                .bind(collection.to_string())
                .execute(&mut *tx)
                .await?;
        }
        if u.fee > 0.0 {
            let postings = self.fee_postings(&mut tx, u).await?;
            crate::ledger::post(&mut tx, u.at, &postings).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The requester's payment of a style's fee to its owner; what would take the requester
    /// below their floor is written off by the horde.
    async fn fee_postings(
        &self,
        conn: &mut sqlx::AnyConnection,
        u: &StyleUse,
    ) -> Result<Vec<Posting>> {
        let row = sqlx::query(
            "SELECT CAST(kudos AS DOUBLE PRECISION), oauth_id FROM users WHERE id = $1",
        )
        .bind(u.requester_id)
        .fetch_one(&mut *conn)
        .await?;
        let balance: f64 = row.try_get(0)?;
        let oauth: String = row.try_get(1)?;
        let floor = kudos_floor(u.requester_id, crate::users::is_pseudonymous(&oauth));
        let forgiven = forgiven_debit(balance, u.fee, floor);
        let with = |account, amount, kind, counterparty| Posting {
            counterparty: Some(counterparty),
            request_id: Some(u.request_id),
            ..Posting::new(account, amount, kind)
        };
        let mut postings = vec![
            with(u.requester_id, -u.fee, Kind::Spend, u.owner_id),
            with(u.owner_id, u.fee, Kind::Styled, u.requester_id),
        ];
        if forgiven > 0.0 {
            postings.push(with(u.requester_id, forgiven, Kind::Floor, HORDE_ACCOUNT));
            postings.push(with(HORDE_ACCOUNT, -forgiven, Kind::Floor, u.requester_id));
        }
        Ok(postings)
    }
}
