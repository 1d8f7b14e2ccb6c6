//! The catalogue component: what requests are checked against, each replaced whole when it
//! changes: the image and text model references (reloaded on an interval, `model_reference.rs`) and the
//! moderators' prompt filters, compiled (rebuilt on every change, `filters.rs`). Readers take
//! a shared copy, so a reload never waits for them. Each model reference is kept beside the
//! JSON text it was parsed from, which workers fetch unchanged (`routes/reference.rs`: they
//! need its `config` entries, download URLs and checksums, which the parsed reference drops).

use horde_core::model_reference::ModelReference;
use horde_core::prompt_filter::FilterSet;
use horde_core::text::TextModelReference;
use std::sync::{Arc, RwLock};

/// The model reference and the prompt filters (see the module documentation). Each lock is
/// held only to clone or replace its `Arc`, never with another lock.
pub struct Catalogue {
    model_reference: RwLock<Arc<ModelReference>>,
    text_reference: RwLock<Arc<TextModelReference>>,
    filters: RwLock<Arc<FilterSet>>,
    /// The JSON text of the image model reference, as read.
    image_json: RwLock<Arc<str>>,
    /// The JSON text of the text model reference, as read.
    text_json: RwLock<Arc<str>>,
}

impl Catalogue {
    pub fn new(
        model_reference: ModelReference,
        text_reference: TextModelReference,
        filters: FilterSet,
    ) -> Self {
        Catalogue {
            model_reference: RwLock::new(Arc::new(model_reference)),
            text_reference: RwLock::new(Arc::new(text_reference)),
            filters: RwLock::new(Arc::new(filters)),
            image_json: RwLock::new(Arc::from("")),
            text_json: RwLock::new(Arc::from("")),
        }
    }

    /// This catalogue with the JSON texts its references were parsed from (image, text).
    pub fn with_reference_json(self, image: String, text: String) -> Self {
        *self.image_json.write().expect("image json lock") = Arc::from(image);
        *self.text_json.write().expect("text json lock") = Arc::from(text);
        self
    }

    /// The JSON text the image model reference now loaded was parsed from.
    pub fn image_reference_json(&self) -> Arc<str> {
        self.image_json.read().expect("image json lock").clone()
    }

    /// The JSON text the text model reference now loaded was parsed from.
    pub fn text_reference_json(&self) -> Arc<str> {
        self.text_json.read().expect("text json lock").clone()
    }

    /// The model reference as now loaded.
    pub fn model_reference(&self) -> Arc<ModelReference> {
        self.model_reference
            .read()
            .expect("model reference lock")
            .clone()
    }

    /// Puts `model_reference` in place of the loaded one.
    pub fn replace_model_reference(&self, model_reference: ModelReference, json: String) {
        *self.model_reference.write().expect("model reference lock") = Arc::new(model_reference);
        *self.image_json.write().expect("image json lock") = Arc::from(json);
    }

    /// The text model reference as now loaded.
    pub fn text_reference(&self) -> Arc<TextModelReference> {
        self.text_reference
            .read()
            .expect("text reference lock")
            .clone()
    }

    /// Puts `text_reference` in place of the loaded one.
    pub fn replace_text_reference(&self, text_reference: TextModelReference, json: String) {
        *self.text_reference.write().expect("text reference lock") = Arc::new(text_reference);
        *self.text_json.write().expect("text json lock") = Arc::from(json);
    }

    /// The prompt filters as now compiled.
    pub fn filters(&self) -> Arc<FilterSet> {
        self.filters.read().expect("filters lock").clone()
    }

    /// Puts `filters` in place of the compiled ones.
    pub fn replace_filters(&self, filters: FilterSet) {
        *self.filters.write().expect("filters lock") = Arc::new(filters);
    }
}
