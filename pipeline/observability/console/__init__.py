"""``refinery console``: a live web page of the fleet, made from the ``/fleet.json``
of ingests and collectors started with ``--metrics`` (see README, "Watch the fleet")."""
