"""The HDF5 embedding cache: schema, writer and reader (:mod:`.store`), torchrun shards (:mod:`.shards`),
exports for tools that do not read HDF5 (:mod:`.export`)."""
