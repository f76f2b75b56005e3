"""The status page for the front desk: what is waiting, in progress, done today and failed per
patient folder, the EHR connections, a search and a Retry button, served by the daemon."""
