"""Working on cached features: metrics (:mod:`.evaluate`), the linear-probe search (:mod:`.search`) and
reports (:mod:`.report`)."""
