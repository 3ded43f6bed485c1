"""Source adapters: each builds a :class:`~sktransfer._backbone.Backbone` from one library.

The registry (:mod:`sktransfer.backbones`) imports these modules; they import only
:mod:`sktransfer._backbone` and :mod:`sktransfer.exceptions`, never the registry.
"""
