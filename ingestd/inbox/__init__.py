"""The inbox: watching, settling, which names count, claiming by rename."""
