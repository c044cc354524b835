"""Rows of the 11 sources in their Hub schemas, written as the datasets' cards and viewers show them: every
column, the real first rows where we have them (GSM8K, MetaMathQA, the Orca-Math card's example, OpenOrca's
first row), and the hard shapes of each source (prose endings, PRM-800K's `# Answer`, a bare choice letter,
German, a system prompt, a JSON answer). Long answers are abridged where noted, keeping their structure."""

GSM8K = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
               "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
               "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"},
    {"question": "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she "
                 "needs. Her parents decided to give her $15 for that purpose, and her grandparents twice as much as "
                 "her parents. How much more money does Betty need to buy the wallet?",
     "answer": "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\n"
               "Betty's grandparents gave her 15 * 2 = $<<15*2=30>>30.\n"
               "This means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5"},
]

METAMATHQA = [
    {"query": "Gracie and Joe are choosing numbers on the complex plane. Joe chooses the point $1+2i$. Gracie "
              "chooses $-1+i$. How far apart are Gracie and Joe's points?",
     "response": "The distance between two points $(x_1,y_1)$ and $(x_2,y_2)$ in the complex plane is given by the "
                 "formula $\\sqrt{(x_2-x_1)^2+(y_2-y_1)^2}$.\n"
                 "In this case, Joe's point is $(1,2)$ and Gracie's point is $(-1,1)$.\n"
                 "So the distance between their points is $\\sqrt{((-1)-(1))^2+((1)-(2))^2}=\\sqrt{(-2)^2+(-1)^2}"
                 "=\\sqrt{4+1}=\\sqrt{5}$.\n"
                 "Therefore, Gracie and Joe's points are $\\boxed{\\sqrt{5}}$ units apart.\nThe answer is: \\sqrt{5}",
     "type": "MATH_AnsAug",
     "original_question": "Gracie and Joe are choosing numbers on the complex plane. Joe chooses the point $1+2i$. "
                          "Gracie chooses $-1+i$. How far apart are Gracie and Joe's points?"},
    {"query": "What is the total cost of purchasing equipment for all sixteen players on the football team, "
              "considering that each player requires a $25 jersey, a $15.20 pair of shorts, and a pair of socks "
              "priced at $6.80?",
     "response": "Each player requires a $25 jersey, a $15.20 pair of shorts, and a pair of socks priced at $6.80.\n"
                 "So the total cost for each player is $25 + $15.20 + $6.80 = $47.\n"
                 "Since there are sixteen players on the football team, the total cost for all of them is "
                 "16 * $47 = $752.\n#### 752\nThe answer is: 752",
     "type": "GSM_Rephrased",
     "original_question": "A youth football team has sixteen players. Each player needs a $25 jersey, a $15.20 pair "
                          "of shorts and a pair of socks that cost $6.80. How much do the equipment of all the "
                          "players cost?"},
    {"query": "A rectangular box has a volume of X cubic feet. How many cubic yards are in the volume of this box?\n"
              "If we know the answer to the above question is 4, what is the value of unknown variable X?",
     "response": "We want to find the value of $X$ in the given situation.\n"
                 "We are told that the volume of the rectangular box is $X$ cubic feet.\n"
                 "To convert cubic feet to cubic yards, we need to divide by 27, since there are 27 cubic feet in "
                 "1 cubic yard.\nSo, the volume of the box in cubic yards is:\n$\\frac{X}{27}$\n"
                 "Given that the volume is 4 cubic yards, we can write:\n$4 = \\frac{X}{27}$\n"
                 "Multiplying both sides of the equation by 27 to eliminate the fraction, we get:\n$108 = X$\n"
                 "The value of X is 108.\nThe answer is: 108",
     "type": "MATH_FOBAR",
     "original_question": "A rectangular box has a volume of 108 cubic feet. How many cubic yards are in the volume "
                          "of this box?"},
]

OPENORCA = [
    {"id": "niv.242684", "system_prompt": "",
     "question": "You will be given a definition of a task first, then some input of the task.\n"
                 "This task is about using the specified sentence and converting the sentence to Resource "
                 "Description Framework (RDF) triplets of the form (subject, predicate object). The RDF triplets "
                 "generated must be such that the triplets accurately capture the structure and semantics of the "
                 "input sentence. The input is a sentence and the output is a list of triplets of the form "
                 "[subject, predicate, object] that capture the relationships present in the sentence. When a "
                 "sentence has more than 1 RDF triplet possible, the output must contain all of them.\n\n"
                 "AFC Ajax (amateurs)'s ground is Sportpark De Toekomst where Ajax Youth Academy also play.\nOutput:",
     "response": '[\n  ["AFC Ajax (amateurs)", "has ground", "Sportpark De Toekomst"],\n'
                 '  ["Ajax Youth Academy", "plays at", "Sportpark De Toekomst"]\n]'},
    {"id": "t0.1286581",
     "system_prompt": "You are an AI assistant. User will you give you a task. Your goal is to complete the task as "
                      "faithfully as you can. While performing the task think step-by-step and justify your steps.",
     "question": "Translate \"The cat is sleeping on the sofa.\" to German.",
     "response": "Step 1: Identify the parts of the sentence.\nThe subject is \"the cat\", the verb is \"is sleeping\" "
                 "and the place is \"on the sofa\".\n\nStep 2: Translate each part.\n\"The cat\" is \"Die Katze\", "
                 "\"is sleeping\" is \"schläft\" and \"on the sofa\" is \"auf dem Sofa\".\n\n"
                 "Step 3: Put the parts together in German word order.\n\n"
                 "The translation is: \"Die Katze schläft auf dem Sofa.\""},
    {"id": "flan.1954210",
     "system_prompt": "You are an AI assistant that follows instruction extremely well. Help as much as you can.",
     "question": "Premise: \"A man in a blue shirt is riding a bike down the street.\"\nHypothesis: \"A man is "
                 "asleep in his bed.\"\nIs the hypothesis entailed by the premise?\nOptions:\n(A). yes\n"
                 "(B). it is not possible to tell\n(C). no\nAnswer:",
     "response": "(C)."},
    {"id": "cot.86217",
     "system_prompt": "You are an AI assistant that helps people find information. User will you give you a "
                      "question. Your task is to answer as faithfully as you can. While answering think "
                      "step-by-step and justify your answer.",
     "question": "A store sells pencils in packs of 12. Mia needs 150 pencils for her class. How many packs does "
                 "she have to buy? Let's think first. Chain of thought:",
     "response": "Mia needs 150 pencils and each pack holds 12 pencils. 150 / 12 = 12.5, so 12 packs are not "
                 "enough. She has to round up to the next whole pack.\nSo, Mia has to buy 13 packs."},
]

OPEN_PLATYPUS = [
    {"instruction": "How many vertical asymptotes does the graph of $y=\\frac{2}{x^2+x-6}$ have?", "input": "",
     "output": "I know that vertical asymptotes occur when the denominator of a rational function is zero, and the "
               "numerator is not.\nSo I want to find the values of x that make $x^2+x-6=0$.\n"
               "I can factor this quadratic as $(x+3)(x-2)=0$.\nSo the solutions are $x=-3$ and $x=2$.\n"
               "These are the two values of x that make the denominator zero, and the numerator is always 2, so "
               "these are the vertical asymptotes.\nTherefore, the graph has two vertical asymptotes.\n\n"
               "# Answer\n\n2",
     "data_source": "MATH/PRM-800K"},
    {"instruction": "Columnist: Some people argue that the government should not fund the arts, since art is a "
                    "luxury. But a society's art is one of the main ways it remembers itself. So funding the arts "
                    "is not a luxury but a way of preserving a society's memory.\nWhich one of the following most "
                    "accurately expresses the conclusion drawn in the columnist's argument?\n"
                    "A: Art is one of the main ways a society remembers itself.\n"
                    "B: Funding the arts is a way of preserving a society's memory rather than a luxury.\n"
                    "C: Some people argue that the government should not fund the arts.\n"
                    "D: The government should fund every form of art.\nChoose A, B, C or D as your solution.",
     "input": "", "output": "B", "data_source": "reclor"},
    {"instruction": "Select the living thing.\nA: tortoise\nB: pushpin", "input": "",
     "output": "A tortoise is a living thing.\nTortoises grow and respond to the world around them. They need food "
               "and water.\nA pushpin is not a living thing.\nPushpins do not have all of the traits of living "
               "things. They do not grow or respond to the world around them. They do not need food or water.",
     "data_source": "scienceqa"},
    {"instruction": "What is the determinant of the matrix A = [[1, 0, 0], [2, 7, 0], [3, 8, 6]]?\n"
                    "Relevant Theorem: The determinant of a triangular matrix is the product of its diagonal "
                    "entries.",
     "input": "", "output": "42", "data_source": "theoremqa"},
]

ORCA_MATH = [
    {"question": "In a highly contested election having multiple candidates, Mr. Jackson, one of the losing "
                 "candidates, received 3,485,782 votes, which accounted for precisely 38.7 percent of all votes. To "
                 "have achieved a victory, he would have needed to secure at least 51 percent of all votes. "
                 "Approximately, what percent of the remaining unsecured votes would Mr. Jackson have needed to "
                 "accumulate to reach this victory threshold?",
     # the card's example answer, abridged in the middle
     "answer": "First, let's find out the total number of votes cast in the election. Since Mr. Jackson received "
               "38.7% of all votes, and that amounted to 3,485,782 votes, we can set up the following equation to "
               "find the total number of votes (T):\n\n0.387 * T = 3,485,782\n\nNow, solve for T:\n\n"
               "T = 3,485,782 / 0.387\nT ≈ 9,007,186 votes (rounded to the nearest whole number)\n\n"
               "Next, let's find out how many votes Mr. Jackson would have needed to reach the victory threshold "
               "of 51%:\n\n0.51 * T ≈ 4,593,665 votes\n\nThe remaining unsecured votes are the votes that were not "
               "for Mr. Jackson, 61.3% of all votes, about 5,521,405 votes.\n\n"
               "Percentage needed ≈ (1,107,883 / 5,521,405) * 100 ≈ 20.07%\n\n"
               "So, Mr. Jackson would have needed to secure approximately 20.07% of the remaining unsecured votes "
               "to reach the victory threshold of 51%."},
    {"question": "When a number is divided by 3, the result is 50 less than if the number had been divided by 2. "
                 "What is the number?",
     "answer": "Let's call the number we're looking for \"x\".\n\nAccording to the problem, when x is divided by 3, "
               "the result is 50 less than when x is divided by 2. We can write this as an equation:\n\n"
               "x/3 = x/2 - 50\n\nTo solve for x, we need to get rid of the fractions by finding a common "
               "denominator, which in this case is 6. We multiply both sides of the equation by 6:\n\n"
               "6 * (x/3) = 6 * (x/2 - 50)\n\n2x = 3x - 300\n\nNow, we subtract 3x from both sides:\n\n"
               "-x = -300\n\nFinally, we multiply both sides by -1:\n\nx = 300\n\nSo, the number is 300."},
    {"question": "A train 120 meters long is running at a speed of 54 km/hr. How long will it take to pass a "
                 "man standing on the platform?",
     "answer": "To find the time it takes for the train to pass the man, we convert its speed from km/hr to m/s, "
               "because the length of the train is given in meters.\n\nSpeed in m/s = 54 * (1000 / 3600) = 15 m/s"
               "\n\nTime = Distance / Speed = 120 meters / 15 m/s = 8 seconds\n\n"
               "Therefore, it will take the train 8 seconds to pass the man."},
]

CAMEL_MATH = [
    {"role_1": "Mathematician_RoleType.ASSISTANT", "topic;": "Algebra", "sub_topic": "Solving linear equations",
     "message_1": "Solve for x: 5x + 3 = 28",
     "message_2": "To solve for x, we need to isolate x on one side of the equation. \n\n"
                  "Step 1: Subtract 3 from both sides of the equation.\n5x + 3 - 3 = 28 - 3\n5x = 25\n\n"
                  "Step 2: Divide both sides of the equation by 5.\n5x / 5 = 25 / 5\nx = 5\n\n"
                  "So, the solution is x = 5."},
    {"role_1": "Mathematician_RoleType.ASSISTANT", "topic;": "Algebra", "sub_topic": "Solving quadratic equations",
     "message_1": "Solve the quadratic equation: x^2 - 5x + 6 = 0",
     "message_2": "To solve the quadratic equation x^2 - 5x + 6 = 0, we can factor the equation.\n\n"
                  "(x - 2)(x - 3) = 0\n\nNow, we set each factor equal to zero and solve for x:\n\n"
                  "x - 2 = 0  =>  x = 2\nx - 3 = 0  =>  x = 3\n\n"
                  "So, the solutions to the equation are x = 2 and x = 3."},
    {"role_1": "Mathematician_RoleType.ASSISTANT", "topic;": "Geometry",
     "sub_topic": "Finding the perimeter of a rectangle",
     "message_1": "A rectangle has a length of 8 cm and a width of 5 cm. What is the perimeter of the rectangle?",
     "message_2": "To find the perimeter of a rectangle, we use the formula:\n\nPerimeter = 2(length + width)\n\n"
                  "In this case, the length is 8 cm and the width is 5 cm. So, we plug in the values:\n\n"
                  "Perimeter = 2(8 + 5)\nPerimeter = 2(13)\nPerimeter = 26 cm\n\n"
                  "The perimeter of the rectangle is 26 cm."},
]

OPENSCHNABELTIER = [
    {"instruction": OPEN_PLATYPUS[0]["instruction"], "output": OPEN_PLATYPUS[0]["output"],
     "instruction_de": "Wie viele vertikale Asymptoten hat der Graph von $y=\\frac{2}{x^2+x-6}$?",
     "output_de": "Ich weiß, dass vertikale Asymptoten auftreten, wenn der Nenner einer rationalen Funktion Null ist "
                  "und der Zähler nicht.\nAlso möchte ich die Werte von x finden, für die $x^2+x-6=0$ gilt.\n"
                  "Ich kann diese quadratische Gleichung als $(x+3)(x-2)=0$ faktorisieren.\n"
                  "Die Lösungen sind also $x=-3$ und $x=2$.\nDaher hat der Graph zwei vertikale Asymptoten.\n\n"
                  "# Antwort\n\n2"},
    {"instruction": OPEN_PLATYPUS[1]["instruction"], "output": "B",
     "instruction_de": "Kolumnist: Manche meinen, der Staat solle die Kunst nicht fördern, da Kunst ein Luxus sei. "
                       "Doch die Kunst einer Gesellschaft ist eines der wichtigsten Mittel, mit denen sie sich an "
                       "sich selbst erinnert. Die Förderung der Kunst ist also kein Luxus, sondern bewahrt das "
                       "Gedächtnis einer Gesellschaft.\nWelche der folgenden Aussagen gibt die Schlussfolgerung des "
                       "Kolumnisten am genauesten wieder?\nA: Kunst ist eines der wichtigsten Mittel, mit denen "
                       "sich eine Gesellschaft erinnert.\nB: Die Förderung der Kunst bewahrt das Gedächtnis einer "
                       "Gesellschaft und ist kein Luxus.\nC: Manche meinen, der Staat solle die Kunst nicht "
                       "fördern.\nD: Der Staat sollte jede Kunstform fördern.\n"
                       "Wählen Sie A, B, C oder D als Ihre Lösung.",
     "output_de": "B"},
    {"instruction": OPEN_PLATYPUS[2]["instruction"], "output": OPEN_PLATYPUS[2]["output"],
     "instruction_de": "Wähle das Lebewesen aus.\nA: Schildkröte\nB: Reißzwecke",
     "output_de": "Eine Schildkröte ist ein Lebewesen.\nSchildkröten wachsen und reagieren auf ihre Umwelt. Sie "
                  "brauchen Nahrung und Wasser.\nEine Reißzwecke ist kein Lebewesen.\nReißzwecken haben nicht "
                  "alle Merkmale von Lebewesen. Sie wachsen nicht und brauchen weder Nahrung noch Wasser."},
]

ULTRACHAT = [
    {"id": "0", "data": [
        "How can cross training benefit groups like runners, swimmers, or weightlifters?",
        "Cross training can benefit groups like runners, swimmers, or weightlifters in the following ways:\n\n"
        "1. Reduces the risk of injury: Cross training involves different types of exercises that work different "
        "muscle groups.\n\n2. Improves overall fitness: Cross training helps improve overall fitness levels.",
        "That makes sense. I've been wanting to improve my running time, but I never thought about incorporating "
        "strength training. Do you have any recommendations for specific exercises?",
        "Sure, here are some strength training exercises that can benefit runners:\n\n1. Squats\n2. Lunges\n"
        "3. Deadlifts"]},
]

FINEWEB_EDU = [
    {"text": "The Independent Jane\nFor all the love, romance and scandal in Jane Austen's books, what they are "
             "really about is freedom and independence. Independence of thought and the freedom to choose.",
     "id": "<urn:uuid:0d8a309d-25c5-405d-a08a-c11239f0d717>", "dump": "CC-MAIN-2013-20",
     "url": "http://austenauthors.net/the-independent-jane",
     "file_path": "s3://commoncrawl/crawl-data/CC-MAIN-2013-20/segments/1368696381249/warc/"
                  "CC-MAIN-20130516092621-00000-ip-10-60-113-184.ec2.internal.warc.gz",
     "language": "en", "language_score": 0.9743, "token_count": 845, "score": 2.75, "int_score": 3},
]

CULTURAX_DE = [
    {"text": "Die Stadtbibliothek bleibt wegen Umbauarbeiten vom 3. bis 14. Juli geschlossen. Ausgeliehene "
             "Medien können in dieser Zeit am Rückgabeautomaten im Rathaus abgegeben werden.",
     "timestamp": "2019/07/01 09:12:44", "url": "https://www.example-stadt.de/aktuelles/bibliothek", "source": "mC4"},
]

THE_STACK_PYTHON = [
    {"content": "def fizzbuzz(n):\n    for i in range(1, n + 1):\n        print('Fizz' * (i % 3 == 0) + "
                "'Buzz' * (i % 5 == 0) or i)\n",
     "max_stars_repo_path": "fizzbuzz.py", "max_stars_repo_name": "someone/katas", "lang": "Python", "ext": "py",
     "size": 113, "hexsha": "5d41402abc4b2a76b9719d911017c592", "avg_line_length": 37.7, "max_line_length": 77,
     "alphanum_fraction": 0.61},
]

ROWS = {
    "fineweb_edu": FINEWEB_EDU, "culturax_de": CULTURAX_DE, "the_stack_python": THE_STACK_PYTHON, "gsm8k": GSM8K,
    "metamathqa": METAMATHQA, "openorca": OPENORCA, "open_platypus": OPEN_PLATYPUS, "orca_math": ORCA_MATH,
    "camel_math": CAMEL_MATH, "ultrachat": ULTRACHAT, "openschnabeltier": OPENSCHNABELTIER,
}
REASONING = ("gsm8k", "metamathqa", "openorca", "open_platypus", "orca_math", "camel_math", "openschnabeltier")
