"""The vocabulary of the rule-based motion captioner: categories, subject nouns, motion verbs and
the words and patterns it drops.

Part of :mod:`i2vlab.data.motion_captions` (see there).
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)


#: category labels (the paper's example: "human")
CATEGORIES: tuple[str, ...] = ("human", "animal", "vehicle", "nature", "object", "camera")


_SUBJECT_WORDS: dict[str, str] = {
    "human": (
        "man men woman women person people persons guy guys girl girls boy boys child children kid kids "
        "baby babies toddler toddlers teenager teenagers teen teens lady ladies gentleman gentlemen "
        "businessman businessmen businesswoman businesswomen worker workers couple couples family "
        "families friends friend student students athlete athletes player players dancer dancers "
        "runner runners swimmer swimmers surfer surfers skier skiers skater skaters cyclist cyclists "
        "biker bikers rider riders driver drivers chef chefs cook cooks doctor doctors nurse nurses "
        "soldier soldiers police policeman policemen farmer farmers mother mothers father fathers "
        "mom dad daughter daughters son sons grandmother grandfather granddaughter grandson "
        "bride groom model models musician musicians singer singers guitarist drummer pianist "
        "boxer boxers fighter fighters crowd audience tourist tourists hiker hikers climber climbers "
        "actor actress senior seniors elderly adult adults player footballer gymnast gymnasts "
        "hand hands finger fingers face faces arm arms leg legs foot feet head heads hair eye eyes "
        "lips mouth"
    ),
    "animal": (
        "dog dogs puppy puppies cat cats kitten kittens bird birds horse horses cow cows sheep goat goats "
        "pig pigs chicken chickens hen hens duck ducks goose geese swan swans fish fishes shark sharks "
        "dolphin dolphins whale whales turtle turtles frog frogs snake snakes lizard lizards monkey "
        "monkeys ape apes gorilla gorillas lion lions tiger tigers bear bears elephant elephants "
        "giraffe giraffes zebra zebras deer fox foxes wolf wolves rabbit rabbits squirrel squirrels "
        "mouse mice rat rats butterfly butterflies bee bees insect insects spider spiders ant ants "
        "eagle eagles owl owls parrot parrots pigeon pigeons seagull seagulls gull gulls penguin "
        "penguins seal seals crab crabs jellyfish octopus camel camels kangaroo kangaroos animal animals "
        "flock herd cattle calf calves lamb lambs pony ponies donkey donkeys bull bulls"
    ),
    "vehicle": (
        "car cars truck trucks bus buses train trains tram trams boat boats ship ships yacht yachts "
        "plane planes airplane airplanes aircraft jet jets helicopter helicopters drone drones bike "
        "bikes bicycle bicycles motorcycle motorcycles motorbike scooter scooters taxi taxis van vans "
        "tractor tractors vehicle vehicles traffic subway ferry ferries sailboat sailboats kayak "
        "kayaks canoe canoes rocket rockets balloon balloons excavator crane cranes"
    ),
    "nature": (
        "water waves wave sea ocean river rivers stream streams waterfall waterfalls lake clouds cloud "
        "sky fog mist smoke fire flame flames rain snow snowflakes wind storm lightning sun sunlight "
        "moon stars tide leaves leaf tree trees branches branch grass flowers flower plant plants "
        "wheat field lava sand dust ice steam bubbles"
    ),
    "object": (
        "ball balls flag flags wheel wheels fan fans clock clocks candle candles windmill windmills "
        "turbine turbines paper pages book curtain curtains pendulum coin coins dice toy toys top "
        "globe earth planet liquid coffee tea wine milk paint ink glass robot robots machine machines "
        "gears gear object objects circle circles square squares triangle triangles rectangle "
        "rectangles shape shapes disc disk cube cubes"
    ),
    "camera": "camera cam",
}


#: subject noun -> category
SUBJECTS: dict[str, str] = {w: cat for cat, words in _SUBJECT_WORDS.items() for w in words.split()}


#: collective nouns kept before "of <subject>" ("group of people dancing")
COLLECTIVES = frozenset(
    "group groups crowd couple pair family team flock herd school swarm pack line row bunch".split()
)


_VERBS = (
    # body / people
    "walk run jog sprint jump hop skip dance wave clap swim dive fly drive ride climb crawl fall "
    "roll spin rotate turn twist shake nod talk speak sing laugh smile cry shout scream yell "
    "whisper eat drink chew bite cook cut chop slice stir pour mix knead bake fry grill type write "
    "draw paint play throw catch kick punch hit box fight wrestle push pull lift carry drag swing "
    "hug kiss embrace skate ski snowboard surf sail row paddle stretch exercise train practice "
    "practise bow kneel crouch squat bend lean wink blink breathe yawn sneeze cough wash brush comb "
    "shave sew knit juggle bounce dribble shoot serve pitch bat golf bowl hike march step stomp "
    "tiptoe chase hunt pounce peck wag gallop trot graze flap hover glide soar land launch "
    "accelerate race speed pass overtake park reverse brake steer pedal cycle slide skid drift "
    "float sink rise flow splash ripple crash break burst explode erupt burn flicker blow sway "
    "flutter wiggle wobble vibrate tremble shiver move shift pan zoom tilt orbit track dolly "
    "approach enter leave exit cross circle wander stroll tumble flip somersault cartwheel spin "
    "gesture point beckon salute applaud cheer celebrate greet shake stir drip melt freeze bloom "
    "grow open close fold unfold unroll tie untie pick pluck strum drum plant dig rake mow sweep "
    "mop scrub wipe fill empty spray sprinkle water feed pet stroke scratch lick sniff bark meow "
    "roar howl chirp buzz crawl slither swoop dart zigzag spiral"
)


#: verbs that double their last consonant in the gerund (run -> running)
_DOUBLING = frozenset(
    "run jog hop skip swim clap chop stir hit spin nod grab rub drum step flap trot wag "
    "shop skid dig plan pat tap trim wrap zip drip flip dip sit set cut bat jam sob beg pet pan".split()
)


#: gerunds that are motion only with an object ("doing push-ups", "making a cake", "playing guitar")
_NEEDS_OBJECT = frozenset("do make play perform".split())


#: gerund + noun compounds that name a thing, not a motion ("swimming pool", "parking lot")
_COMPOUND_NOUNS = frozenset(
    "pool pools lot lots room rooms table tables board boards track tracks mall stick sticks bag bags "
    "costume costumes suit suits shoes boots trail trails path paths area areas machine machines "
    "equipment class classes lesson lessons gear mat mats session sessions competition team field "
    "fields school ring rings floor floors stage bike bikes car lane lanes dress dresses wear "
    "hall halls studio studios center centre club clubs range glasses goggles cap caps".split()
)


_STATIC = frozenset(
    "sitting standing posing lying looking holding wearing thinking sleeping waiting resting "
    "staring watching smiling relaxing working reading listening showing using".split()
)


_NUMBERS = frozenset("two three four five six seven eight nine ten several many few".split())


#: camera moves: a motion without a subject is the camera's ("panning across city skyline")
_CAMERA_VERBS = frozenset("pan zoom tilt dolly track orbit".split())


_AUX = frozenset("is are was were be been being am".split())


_DETERMINERS = frozenset("a an the his her their its my your our this that these those some".split())


#: words that end a motion phrase (places, times, manners that are not motion)
_STOP = frozenset(
    "in on at near under above below beneath inside outside during by behind beside besides between "
    "against with without while as when where which who that of for from before after than like "
    "and or but because if then so during amid among while to".split()
)


#: directions kept in the phrase, with up to two following words ("walking across street")
_DIRECTIONS = frozenset(
    "into across through towards toward along past over around up down away off back out onto "
    "forward forwards backward backwards upward upwards downward downwards sideways".split()
)


#: nouns that name the scene: a direction towards them is not kept ("rotating over a noise background")
_SCENE = frozenset("background backdrop backgrounds landscape scenery wallpaper".split())


#: stock-footage words and phrases dropped before parsing
_BOILERPLATE = re.compile(
    r"\b(?:(?:in\s+)?slow[\s-]*(?:motion|mo)|4k|8k|uhd|ultra\s+hd|full\s+hd|hd|1080p|720p|"
    r"stock\s+(?:footage|video)|footage|video|clip|time[\s-]*lapse|timelapse|hyperlapse|"
    r"close[\s-]*up|closeup|extreme|shot|view|aerial|drone\s+shot|cinematic|concept|"
    r"copy\s+space|isolated|slowmo|loop(?:able)?|seamless|animation|b[\s-]*roll)\b"
)


def gerund(base: str) -> str:
    """``run`` -> ``running``, ``dance`` -> ``dancing``, ``lie`` -> ``lying``, ``ski`` -> ``skiing``."""
    if base.endswith("ie"):
        return base[:-2] + "ying"
    if base in _DOUBLING:
        return base + base[-1] + "ing"
    if base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
        return base[:-1] + "ing"
    return base + "ing"


def third_person(base: str) -> str:
    """``walk`` -> ``walks``, ``fly`` -> ``flies``, ``push`` -> ``pushes``."""
    if base.endswith(("s", "sh", "ch", "x", "z", "o")):
        return base + "es"
    if base.endswith("y") and base[-2:-1] not in "aeiou":
        return base[:-1] + "ies"
    return base + "s"


#: motion verbs (base forms) and their forms -> base
MOTION_VERBS: frozenset[str] = frozenset(_VERBS.split()) | _NEEDS_OBJECT


_GERUNDS: dict[str, str] = {gerund(v): v for v in MOTION_VERBS}


_THIRD: dict[str, str] = {third_person(v): v for v in MOTION_VERBS}


_TOKEN = re.compile(r"[a-z]+(?:['-][a-z]+)*|[0-9]+|[,.;:!?()/]")


_PUNCT = frozenset(",.;:!?()/")
