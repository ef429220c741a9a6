"""Small services built on Kiln's subscriber SDK (`services.sdk`)."""
