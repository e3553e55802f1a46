"""`avtime verify`: prove preprocessed shards are intact, aligned and counted."""
