-- Styles and collections (horde_core::styles): a style is a prompt template with the params and
-- models a request naming it runs with; a collection is a list of styles of one kind, one of
-- which a request naming it uses at random. A name is unique among one owner's styles (and
-- among their collections), as on the public horde.
CREATE TABLE styles (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    info TEXT NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    public BIGINT NOT NULL,
    nsfw BIGINT NOT NULL,
    use_count BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL,
    UNIQUE (user_id, name)
);
CREATE INDEX styles_by_use ON styles(kind, public, use_count);
CREATE TABLE style_tags (
    style_id TEXT NOT NULL REFERENCES styles(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (style_id, tag)
);
CREATE INDEX style_tags_by_tag ON style_tags(tag);
CREATE TABLE style_models (
    style_id TEXT NOT NULL REFERENCES styles(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (style_id, model)
);
CREATE INDEX style_models_by_model ON style_models(model);
-- An image style's example images; at most one is primary.
CREATE TABLE style_examples (
    id TEXT PRIMARY KEY,
    style_id TEXT NOT NULL REFERENCES styles(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    is_primary BIGINT NOT NULL,
    created BIGINT NOT NULL
);
CREATE INDEX style_examples_by_style ON style_examples(style_id);
CREATE TABLE style_collections (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    info TEXT NOT NULL,
    public BIGINT NOT NULL,
    use_count BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL,
    UNIQUE (user_id, name)
);
CREATE TABLE style_collection_members (
    collection_id TEXT NOT NULL REFERENCES style_collections(id) ON DELETE CASCADE,
    style_id TEXT NOT NULL REFERENCES styles(id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    PRIMARY KEY (collection_id, style_id)
);
CREATE INDEX style_collection_members_by_style ON style_collection_members(style_id);
