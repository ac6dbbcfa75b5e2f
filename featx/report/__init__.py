"""Reports for people and machines: one document model rendered to Markdown, self-contained HTML and JSON
(:mod:`.document`) and one plot helper (:mod:`.plots`). Each command family builds its own document
(``probe.report``, ``transfer.report``, ``adapt.report``, ``audit.report``)."""
