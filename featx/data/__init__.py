"""The data stage: dataset adapters (:mod:`.sources`) and image decoding (:mod:`.decoding`)."""
