//! Alerts (placeholder until the detector lands).
