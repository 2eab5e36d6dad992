"""Inventory sync: the lab's source of truth (Mozilla's inventory, NetBox, or a file) decides
which devices and relay boards exist, where they are wired and which server owns them.

Spec: ``spec/bmm-protocols.md`` section 7.  A source fetches the complete list or fails
(``mozilla``, ``netbox``, ``filesource``); shared rules keep or skip each system (``rules``); a
pure merge plans the changes and checks the failsafes (``plan``); each change is then applied
in its own transaction (``queries``), by one server at a time (``lease``), from the command
line or the daemon's timer (``sync``, ``service``).
"""
