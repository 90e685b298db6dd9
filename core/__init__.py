"""The bottom layer: the typed configuration and the records every job, topic and test shares."""
