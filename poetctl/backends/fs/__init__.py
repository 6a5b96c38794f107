"""The filesystem spool backend: every module that creates, renames, links, unlinks or locks spool files.

* layout and I/O: :mod:`.layout` (where everything lives), :mod:`.safefs`
  (directories opened without following links), :mod:`.writer` (atomic group
  commits), :mod:`.reader`, :mod:`.index`;
* the daemon's side: :mod:`.listing` (the pending window), :mod:`.journal`
  (journal, completion records, dead letters, quarantine), :mod:`.running`,
  :mod:`.owner`, :mod:`.mover` and its child :mod:`._mover_child`,
  :mod:`.watcher`, :mod:`.reconcile`;
* operator commands: :mod:`.fsck` (+ ``fsck_index``, ``fsck_repair``,
  ``fsck_report``), :mod:`.prune`, :mod:`.replay`, :mod:`.dead`,
  :mod:`.corrupt` (+ ``corrupt_names``, shared with ``status``).

Nothing is imported here, so that importing one module (the CLI's ``emit``
needs only the layout and the writer) does not load the rest.
"""
