"""fraudstream: streaming card-fraud detection on Kafka, Redis and River.

The public API, for applications that embed fraudstream instead of running the
``fraudstream`` command:

>>> import fraudstream
>>> settings = fraudstream.Settings(bootstrap_servers="127.0.0.1:9092", metrics_port=0)
>>> app = fraudstream.Application(settings)   # app.run() serves until app.stop()
>>> fraudstream.Transaction.model_validate({"transaction_id": "t1", "card_id": "c1",
...     "terminal_id": "m1", "amount": 12.5, "timestamp": 1522540800000}).event_time_ms
1522540800000

The code lives in the repository's top-level folders, each a subpackage here:
``service/`` (what runs in production: :mod:`fraudstream.service`),
``producers/`` (simulator, file producer, recorder, replayer:
:mod:`fraudstream.producers`), and the tooling beside them, which imports the
service and never the reverse: ``evaluation/``, ``bench/`` and ``devstack/``.
"""

from fraudstream.producers.produce import produce_file
from fraudstream.producers.recorder import record_topic
from fraudstream.producers.replayer import replay_file
from fraudstream.producers.simulator import Simulation, SimulationConfig, simulate
from fraudstream.producers.stream import stream_simulation
from fraudstream.service.app import Application
from fraudstream.service.errors import FraudstreamError
from fraudstream.service.kafka.connection import KafkaConnection
from fraudstream.service.model import CATALOGUE, FraudModel
from fraudstream.service.schemas import Alert, Label, Reason, ScoreRecord, Transaction
from fraudstream.service.settings import Settings

__all__ = [
    "CATALOGUE",
    "Alert",
    "Application",
    "FraudModel",
    "FraudstreamError",
    "KafkaConnection",
    "Label",
    "Reason",
    "ScoreRecord",
    "Settings",
    "Simulation",
    "SimulationConfig",
    "Transaction",
    "produce_file",
    "record_topic",
    "replay_file",
    "simulate",
    "stream_simulation",
]
