//! The catalogue component: what requests are checked against, each replaced whole when it
//! changes: the image and text model references (reloaded on an interval, `model_reference.rs`) and the
//! moderators' prompt filters, compiled (rebuilt on every change, `filters.rs`). Readers take
//! a shared copy, so a reload never waits for them.

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
        }
    }

    /// The model reference as now loaded.
    pub fn model_reference(&self) -> Arc<ModelReference> {
        self.model_reference
            .read()
            .expect("model reference lock")
            .clone()
    }

    /// Puts `model_reference` in place of the loaded one.
    pub fn replace_model_reference(&self, model_reference: ModelReference) {
        *self.model_reference.write().expect("model reference lock") = Arc::new(model_reference);
    }

    /// The text model reference as now loaded.
    pub fn text_reference(&self) -> Arc<TextModelReference> {
        self.text_reference
            .read()
            .expect("text reference lock")
            .clone()
    }

    /// Puts `text_reference` in place of the loaded one.
    pub fn replace_text_reference(&self, text_reference: TextModelReference) {
        *self.text_reference.write().expect("text reference lock") = Arc::new(text_reference);
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
