"""Media in and out of the models: encode MP4s and thumbnails, probe them, fetch input images."""
