"""The privacy stage: the owner's consent, transforms in the car, purges on revocation.

Modules: ``consent`` (model and rules), ``store`` (durable versioned state),
``config`` (the ``consent:`` section), ``policy`` (consent in force, live
changes, expiry), ``transforms`` (location coarsening, zones), ``pseudonym``
(keyed VIN pseudonyms), ``filter`` (the pipeline stage), ``purge`` (revocation
purges), ``remote`` (network commands: narrow only), ``commands`` (the owner's
commands for the control socket and the CLI).  ``docs/privacy.md`` explains it
all in words for owners and regulators.
"""

from agent.privacy.config import ConsentConfig, consent_config, parse_consent
from agent.privacy.consent import ConsentChange, ConsentError, ConsentState, Grant, Zone
from agent.privacy.filter import PrivacyFilter
from agent.privacy.policy import ConsentPolicy, ConsentView
from agent.privacy.pseudonym import Pseudonymizer
from agent.privacy.store import ConsentStore

__all__ = ["ConsentChange", "ConsentConfig", "ConsentError", "ConsentPolicy", "ConsentState", "ConsentStore",
           "ConsentView", "Grant", "PrivacyFilter", "Pseudonymizer", "Zone", "consent_config", "parse_consent"]
