"""Video data: toy video synthesis, webdataset shard writing and reading, decord decoding."""
