"""The vocabulary of the synthetic job marketplace: occupations, skills, seniority, places, industries.

`star_jax.data.synth` draws a latent world from these lists. Each occupation family carries its own
job titles, the department a director of it runs, the industries that hire it, its skills, and the
work objects and verbs its texts are built from. A skill is written `Canonical|synonym|~misspelling`
(`;` between skills). A skill named in several families is the same skill node; its synonyms and
misspellings may be given wherever it appears. Skills without a hand-written misspelling get a
generated one (`typo`), the kind a profile's free text really contains.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    group: str  # related families share a group: members switch careers and browse within it
    dept: str  # "Director of {dept}"
    titles: tuple[str, ...]
    industries: tuple[str, ...]  # most likely employers, most likely first
    skills: str
    objects: tuple[str, ...]  # what the work is about: "{verb} {object} using {skill}"
    verbs: tuple[tuple[str, str], ...]  # (present, past)
    weight: float = 1.0  # relative share of members and jobs


# LinkedIn-style seniority levels, with how a title is written at each and typical years of experience.
SENIORITY = ("intern", "entry", "associate", "senior", "lead", "director")
SENIORITY_TITLE = ("{} Intern", "Junior {}", "{}", "Senior {}", "Lead {}", "Director of {dept}")
SENIORITY_YEARS = ((0, 1), (0, 2), (2, 5), (5, 10), (8, 15), (12, 25))
SENIORITY_SHARE = (0.05, 0.2, 0.27, 0.25, 0.14, 0.09)

# (city, country, share of members and jobs).
LOCATIONS = (
    ("San Francisco Bay Area", "United States", 6.0),
    ("New York City", "United States", 6.0),
    ("Seattle", "United States", 3.0),
    ("Austin", "United States", 2.5),
    ("Boston", "United States", 2.5),
    ("Chicago", "United States", 3.0),
    ("Los Angeles", "United States", 3.5),
    ("Atlanta", "United States", 2.0),
    ("Denver", "United States", 1.5),
    ("London", "United Kingdom", 5.0),
    ("Manchester", "United Kingdom", 1.5),
    ("Berlin", "Germany", 2.5),
    ("Munich", "Germany", 1.5),
    ("Paris", "France", 3.0),
    ("Amsterdam", "Netherlands", 2.0),
    ("Dublin", "Ireland", 1.5),
    ("Madrid", "Spain", 1.5),
    ("Bengaluru", "India", 4.0),
    ("Hyderabad", "India", 2.0),
    ("Mumbai", "India", 2.5),
    ("Toronto", "Canada", 2.5),
    ("Vancouver", "Canada", 1.5),
    ("Singapore", "Singapore", 2.0),
    ("Sydney", "Australia", 2.0),
    ("Sao Paulo", "Brazil", 2.0),
)
REMOTE = "Remote"  # the location of a remote job

INDUSTRIES = (
    "Software & Internet",
    "Financial Services",
    "Hospital & Health Care",
    "Pharmaceuticals",
    "Retail",
    "Manufacturing",
    "Automotive",
    "Education",
    "Government Administration",
    "Telecommunications",
    "Media & Entertainment",
    "Logistics & Supply Chain",
    "Construction",
    "Energy & Utilities",
    "Management Consulting",
    "Hospitality",
    "Legal Services",
    "Nonprofit",
)

# One sentence per industry for a company blurb, and name suffixes that read like that industry.
INDUSTRY_BLURB = {
    "Software & Internet": "We build cloud products used by teams around the world.",
    "Financial Services": "We help people and businesses save, invest and manage risk.",
    "Hospital & Health Care": "Our hospitals and clinics care for patients across the region.",
    "Pharmaceuticals": "We research, develop and manufacture medicines.",
    "Retail": "We run stores and an online shop serving millions of customers.",
    "Manufacturing": "We design and manufacture industrial equipment and components.",
    "Automotive": "We engineer vehicles, parts and mobility services.",
    "Education": "We teach students from early years to university.",
    "Government Administration": "We deliver public services to residents and businesses.",
    "Telecommunications": "We operate mobile and broadband networks.",
    "Media & Entertainment": "We create and publish news, film and digital content.",
    "Logistics & Supply Chain": "We move goods by road, rail, sea and air.",
    "Construction": "We plan and build infrastructure, offices and homes.",
    "Energy & Utilities": "We generate and distribute power, including renewables.",
    "Management Consulting": "We advise organisations on strategy and operations.",
    "Hospitality": "We run hotels, restaurants and event venues.",
    "Legal Services": "We advise clients on corporate, commercial and regulatory matters.",
    "Nonprofit": "We work with communities on education, health and the environment.",
}
INDUSTRY_SUFFIX = {
    "Software & Internet": ("Labs", "Software", "Technologies", "Cloud", "Systems", "AI"),
    "Financial Services": ("Capital", "Bank", "Financial", "Partners", "Insurance", "Wealth"),
    "Hospital & Health Care": ("Health", "Medical Center", "Hospital", "Clinics", "Care"),
    "Pharmaceuticals": ("Therapeutics", "Pharma", "Biosciences", "Biotech"),
    "Retail": ("Stores", "Market", "Outfitters", "Goods", "Retail"),
    "Manufacturing": ("Industries", "Manufacturing", "Works", "Components"),
    "Automotive": ("Motors", "Automotive", "Mobility"),
    "Education": ("Academy", "University", "Schools", "Learning"),
    "Government Administration": ("County Services", "City Council", "Public Agency"),
    "Telecommunications": ("Telecom", "Networks", "Communications"),
    "Media & Entertainment": ("Media", "Studios", "Publishing", "Entertainment"),
    "Logistics & Supply Chain": ("Logistics", "Freight", "Shipping", "Supply"),
    "Construction": ("Construction", "Builders", "Engineering Group"),
    "Energy & Utilities": ("Energy", "Power", "Utilities", "Renewables"),
    "Management Consulting": ("Consulting", "Advisory", "Group"),
    "Hospitality": ("Hotels", "Hospitality", "Resorts", "Kitchen"),
    "Legal Services": ("Law", "Legal", "& Associates"),
    "Nonprofit": ("Foundation", "Trust", "Alliance"),
}
COMPANY_ROOTS_A = tuple(
    "North Blue Red Silver Green Bright Stone Iron Clear Oak Pine River Summit Harbor Cedar Golden "
    "Maple Crest True Swift Bold Star Sun Moon Lake Hill West East South Prime Nova Terra Aqua Vertex "
    "Apex Core Blink Quant Zen Echo Amber Birch Coral Falcon Granite Horizon Juniper Lumen Meridian "
    "Orchid".split()
)
COMPANY_ROOTS_B = tuple(
    "wind field gate bridge wave path stone light point ridge brook forge line peak view works spring "
    "vale port mark leaf shore way rock wood star bay tide crest core haven hurst mont stead ton "
    "water well wick worth land gard ford dale more".split()
)
COMPANY_SIZES = ("1-10", "11-50", "51-200", "201-500", "501-1000", "1001-5000", "5001-10000", "10001+")
COMPANY_SIZE_WORDS = (
    "tiny",
    "small",
    "growing",
    "mid-sized",
    "established",
    "large",
    "very large",
    "global",
)

# Skills any family may list.
GENERAL_SKILLS = (
    "Communication|Communication Skills|~Comunication; Leadership|Team Leadership; Teamwork|Collaboration;"
    " Problem Solving|Problem-solving; Time Management; Microsoft Office|MS Office;"
    " Public Speaking|Presenting; Mentoring|Coaching; Critical Thinking; Attention to Detail"
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "Software Engineering",
        "engineering",
        "Engineering",
        ("Software Engineer", "Backend Developer", "Full Stack Developer"),
        ("Software & Internet", "Financial Services", "Telecommunications", "Media & Entertainment"),
        "Python|Python3; Java|~Jave; JavaScript|JS|~Javascipt; TypeScript|TS; Golang|Go; SQL; REST "
        "APIs|RESTful services; Microservices|Micro-services|~Microservises; Git|GitHub; "
        "Docker|Containers; Kubernetes|K8s|~Kubernates; CI/CD|Continuous Integration; System Design; "
        "Unit Testing|TDD; PostgreSQL|Postgres|~Postgress",
        (
            "backend services",
            "payment APIs",
            "search infrastructure",
            "internal developer tools",
            "a customer-facing web platform",
        ),
        (("build", "built"), ("design", "designed"), ("scale", "scaled"), ("maintain", "maintained")),
        weight=3.0,
    ),
    Family(
        "Frontend Engineering",
        "engineering",
        "Frontend Engineering",
        ("Frontend Engineer", "UI Developer", "Web Developer"),
        ("Software & Internet", "Media & Entertainment", "Retail"),
        "JavaScript|JS; TypeScript|TS; React|React.js|ReactJS; Vue.js|Vue|VueJS; Angular|AngularJS; "
        "HTML5|HTML; CSS3|CSS; Sass|SCSS; Webpack; Web Accessibility|a11y|WCAG; Responsive Design; "
        "Jest; Figma; GraphQL; Next.js|NextJS",
        (
            "single-page applications",
            "the checkout flow",
            "a component library",
            "landing pages",
            "dashboards for customers",
        ),
        (("build", "built"), ("implement", "implemented"), ("optimise", "optimised"), ("ship", "shipped")),
        weight=2.0,
    ),
    Family(
        "Mobile Development",
        "engineering",
        "Mobile Engineering",
        ("iOS Developer", "Android Developer", "Mobile Engineer"),
        ("Software & Internet", "Retail", "Financial Services"),
        "Swift; Kotlin; Objective-C|ObjC; Android SDK; SwiftUI; Jetpack Compose; Xcode; "
        "Flutter|~Fluter; React Native|RN; Firebase; Mobile UI Design; App Store Optimization|ASO; "
        "REST APIs; Git; Unit Testing",
        ("mobile apps", "offline sync", "push notifications", "in-app payments", "app performance"),
        (("build", "built"), ("release", "released"), ("improve", "improved"), ("maintain", "maintained")),
        weight=1.2,
    ),
    Family(
        "Data Engineering",
        "data",
        "Data Engineering",
        ("Data Engineer", "ETL Developer", "Big Data Engineer"),
        ("Software & Internet", "Financial Services", "Retail", "Telecommunications"),
        "SQL; Python; Apache Spark|PySpark|Spark; Apache Kafka|Kafka; Apache Airflow|Airflow; "
        "dbt|data build tool; Snowflake; Data Modeling|Data Modelling; ETL|ELT|ETL pipelines; "
        "Hadoop|HDFS; Scala; AWS|Amazon Web Services; Data Warehousing|DWH; BigQuery|Google BigQuery;"
        " Delta Lake",
        (
            "batch data pipelines",
            "streaming pipelines",
            "the data warehouse",
            "a data lake",
            "event ingestion",
        ),
        (("build", "built"), ("migrate", "migrated"), ("automate", "automated"), ("own", "owned")),
        weight=1.5,
    ),
    Family(
        "Data Science & Analytics",
        "data",
        "Data Science",
        ("Data Scientist", "Data Analyst", "Analytics Engineer"),
        ("Software & Internet", "Financial Services", "Retail", "Hospital & Health Care"),
        "Python; R|R Programming; SQL; Statistics|Statistical Analysis|~Statistcs; pandas; "
        "scikit-learn|sklearn; A/B Testing|Experimentation; Tableau; Power BI|PowerBI; Regression "
        "Analysis; Data Visualization|Data Visualisation|~Data Visulization; Hypothesis Testing; "
        "Excel|Microsoft Excel|MS Excel; Forecasting; Jupyter",
        (
            "churn models",
            "pricing experiments",
            "executive dashboards",
            "customer segmentation",
            "demand forecasts",
        ),
        (("build", "built"), ("analyse", "analysed"), ("present", "presented"), ("model", "modelled")),
        weight=2.0,
    ),
    Family(
        "Machine Learning",
        "data",
        "Machine Learning",
        ("Machine Learning Engineer", "Applied Scientist", "ML Researcher"),
        ("Software & Internet", "Financial Services", "Automotive"),
        "Machine Learning|ML; Deep Learning|DL; PyTorch|Torch; TensorFlow|TF|~Tensorflow; JAX; "
        "Natural Language Processing|NLP; Computer Vision|CV; Large Language Models|LLMs; MLOps; "
        "Python; CUDA; Transformers; Reinforcement Learning|RL; Feature Engineering; Recommender "
        "Systems|RecSys",
        (
            "ranking models",
            "recommendation systems",
            "training pipelines",
            "fraud detection models",
            "model serving",
        ),
        (("train", "trained"), ("deploy", "deployed"), ("research", "researched"), ("design", "designed")),
        weight=1.3,
    ),
    Family(
        "DevOps & Cloud",
        "engineering",
        "Infrastructure",
        ("DevOps Engineer", "Site Reliability Engineer", "Cloud Engineer"),
        ("Software & Internet", "Financial Services", "Telecommunications"),
        "Kubernetes|K8s; Docker; Terraform|~Terrafrom; AWS|Amazon Web Services; Google Cloud|GCP; "
        "Microsoft Azure|Azure; Linux; Bash|Shell Scripting; Ansible; Prometheus; Grafana; CI/CD; "
        "Jenkins; Incident Management|On-call; Networking|TCP/IP",
        (
            "cloud infrastructure",
            "deployment pipelines",
            "monitoring and alerting",
            "disaster recovery",
            "cost optimisation",
        ),
        (("automate", "automated"), ("operate", "operated"), ("migrate", "migrated"), ("harden", "hardened")),
        weight=1.5,
    ),
    Family(
        "Cybersecurity",
        "engineering",
        "Information Security",
        ("Security Engineer", "Security Analyst", "Penetration Tester"),
        ("Financial Services", "Software & Internet", "Government Administration"),
        "Network Security; SIEM; Splunk; Penetration Testing|Pen Testing|Pentesting; Vulnerability "
        "Assessment; Incident Response|IR; Threat Intelligence; Firewalls; ISO 27001; Identity and "
        "Access Management|IAM; Cryptography; NIST Cybersecurity Framework|NIST CSF; Security Audits;"
        " Python; Linux",
        (
            "security monitoring",
            "incident investigations",
            "access controls",
            "vulnerability scans",
            "security reviews",
        ),
        (("run", "ran"), ("lead", "led"), ("strengthen", "strengthened"), ("audit", "audited")),
    ),
    Family(
        "Quality Assurance",
        "engineering",
        "Quality Engineering",
        ("QA Engineer", "Test Automation Engineer", "Software Tester"),
        ("Software & Internet", "Financial Services", "Telecommunications"),
        "Selenium|Selenium WebDriver; Test Automation; Manual Testing; Cypress; JIRA|Jira; Regression"
        " Testing; Test Planning|Test Plans; API Testing; Postman; Performance Testing|Load Testing; "
        "JMeter|Apache JMeter; Agile|Agile Methodologies; Bug Tracking|Defect Tracking; Python; Java",
        ("release testing", "automated test suites", "test plans", "regression cycles", "quality metrics"),
        (("own", "owned"), ("automate", "automated"), ("write", "wrote"), ("run", "ran")),
    ),
    Family(
        "IT Support & Administration",
        "engineering",
        "IT",
        ("IT Support Specialist", "Systems Administrator", "Help Desk Technician"),
        ("Education", "Government Administration", "Hospital & Health Care", "Manufacturing"),
        "Active Directory|AD; Windows Server; Microsoft 365|Office 365|O365; Troubleshooting; ITIL; "
        "Networking; VMware; Linux; Hardware Support; ServiceNow; PowerShell; DNS; Backup and "
        "Recovery; Customer Service; Technical Documentation",
        ("user accounts", "help desk tickets", "laptops and printers", "server patching", "office networks"),
        (("manage", "managed"), ("resolve", "resolved"), ("support", "supported"), ("upgrade", "upgraded")),
        weight=1.2,
    ),
    Family(
        "Product Management",
        "business",
        "Product",
        ("Product Manager", "Product Owner", "Technical Product Manager"),
        ("Software & Internet", "Financial Services", "Retail"),
        "Product Strategy; Product Roadmap|Roadmapping; User Research; Agile; Scrum; JIRA; A/B "
        "Testing; Stakeholder Management; Market Research; Go-to-Market Strategy|GTM; Product "
        "Analytics; Wireframing; SQL; Prioritization|Prioritisation; OKRs",
        (
            "the product roadmap",
            "new features",
            "onboarding flows",
            "pricing and packaging",
            "product launches",
        ),
        (("own", "owned"), ("define", "defined"), ("launch", "launched"), ("prioritise", "prioritised")),
        weight=1.3,
    ),
    Family(
        "UX & Product Design",
        "creative",
        "Design",
        ("UX Designer", "Product Designer", "UI Designer"),
        ("Software & Internet", "Retail", "Media & Entertainment"),
        "Figma; Sketch; Adobe XD|XD; User Research; Wireframing; Prototyping; Usability Testing; "
        "Interaction Design|IxD; Design Systems; Information Architecture|IA; Visual Design; Adobe "
        "Illustrator|Illustrator; Web Accessibility; Journey Mapping; HTML5",
        (
            "user flows",
            "a design system",
            "mobile app screens",
            "usability studies",
            "interactive prototypes",
        ),
        (("design", "designed"), ("test", "tested"), ("redesign", "redesigned"), ("prototype", "prototyped")),
    ),
    Family(
        "Sales",
        "business",
        "Sales",
        ("Account Executive", "Sales Representative", "Business Development Manager"),
        ("Software & Internet", "Manufacturing", "Telecommunications", "Financial Services"),
        "Salesforce|SFDC|~Salesforse; B2B Sales; Cold Calling; Lead Generation; "
        "Negotiation|~Negociation; Account Management; CRM|Customer Relationship Management; Pipeline"
        " Management; Sales Forecasting; Prospecting; Closing; SaaS Sales; Territory Management; "
        "HubSpot; Consultative Selling",
        ("enterprise accounts", "a sales territory", "new business pipeline", "renewals", "partner deals"),
        (("grow", "grew"), ("close", "closed"), ("manage", "managed"), ("open", "opened")),
        weight=2.0,
    ),
    Family(
        "Marketing",
        "business",
        "Marketing",
        ("Marketing Manager", "Digital Marketing Specialist", "Growth Marketer"),
        ("Retail", "Software & Internet", "Media & Entertainment", "Hospitality"),
        "SEO|Search Engine Optimization; SEM|Search Engine Marketing; Google Analytics|GA4; Content "
        "Marketing; Social Media Marketing|SMM; Email Marketing; HubSpot; Marketing Automation; "
        "Copywriting; Google Ads|AdWords; Brand Management; Campaign Management; Market Research; A/B"
        " Testing; Marketo",
        ("paid campaigns", "the brand", "email programs", "social channels", "product launches"),
        (("run", "ran"), ("grow", "grew"), ("plan", "planned"), ("optimise", "optimised")),
        weight=1.8,
    ),
    Family(
        "Accounting & Finance",
        "finance",
        "Finance",
        ("Accountant", "Financial Analyst", "Finance Manager"),
        ("Financial Services", "Manufacturing", "Retail", "Management Consulting"),
        "Financial Modeling|Financial Modelling; Excel; GAAP|US GAAP; IFRS; Budgeting; Forecasting; "
        "Financial Reporting; Accounts Payable|AP; Accounts Receivable|AR; QuickBooks; SAP|SAP FICO; "
        "Auditing|Audit; Variance Analysis; Tax Preparation; Account "
        "Reconciliation|Reconciliations|~Reconcilation",
        ("month-end close", "budgets and forecasts", "management accounts", "audit preparation", "cash flow"),
        (("prepare", "prepared"), ("manage", "managed"), ("report", "reported"), ("improve", "improved")),
        weight=1.8,
    ),
    Family(
        "Investment & Banking",
        "finance",
        "Investments",
        ("Investment Analyst", "Investment Banking Associate", "Portfolio Manager"),
        ("Financial Services", "Management Consulting"),
        "Valuation; Discounted Cash Flow|DCF; Mergers and Acquisitions|M&A; Bloomberg "
        "Terminal|Bloomberg; Equity Research; Financial Modeling; Due Diligence; Portfolio "
        "Management; Risk Management; CFA; Capital Markets; Excel; Pitch Books|Pitchbooks; LBO "
        "Modeling|LBO; Fixed Income",
        ("deal models", "client portfolios", "investment memos", "sector coverage", "transactions"),
        (("build", "built"), ("execute", "executed"), ("advise on", "advised on"), ("cover", "covered")),
    ),
    Family(
        "Human Resources & Recruiting",
        "business",
        "People",
        ("Recruiter", "HR Business Partner", "Talent Acquisition Specialist"),
        ("Software & Internet", "Hospital & Health Care", "Retail", "Management Consulting"),
        "Recruiting|Recruitment; Talent Acquisition|TA; Sourcing|Candidate Sourcing; Onboarding; "
        "Employee Relations; HRIS; Workday; Performance Management; Compensation and Benefits|C&B; "
        "Interviewing; Applicant Tracking Systems|ATS; Employment Law|Labor Law; Succession Planning;"
        " Employer Branding; LinkedIn Recruiter",
        (
            "hiring pipelines",
            "engineering hiring",
            "employee onboarding",
            "performance reviews",
            "HR policies",
        ),
        (("run", "ran"), ("lead", "led"), ("improve", "improved"), ("support", "supported")),
        weight=1.2,
    ),
    Family(
        "Customer Success",
        "business",
        "Customer Success",
        ("Customer Success Manager", "Customer Support Specialist", "Client Services Representative"),
        ("Software & Internet", "Telecommunications", "Financial Services", "Retail"),
        "Customer Service|Customer Support; Zendesk; Customer Retention; Onboarding; Account "
        "Management; Salesforce; Churn Reduction; Conflict Resolution; Upselling|Upsell; Customer "
        "Satisfaction|CSAT; Net Promoter Score|NPS; Ticketing Systems; Communication; Product "
        "Training; Intercom",
        (
            "customer onboarding",
            "a portfolio of accounts",
            "support tickets",
            "renewal conversations",
            "customer feedback",
        ),
        (("manage", "managed"), ("resolve", "resolved"), ("own", "owned"), ("improve", "improved")),
        weight=1.5,
    ),
    Family(
        "Supply Chain & Operations",
        "operations",
        "Operations",
        ("Supply Chain Analyst", "Logistics Coordinator", "Operations Manager"),
        ("Logistics & Supply Chain", "Manufacturing", "Retail", "Automotive"),
        "Supply Chain Management|SCM; Logistics; Inventory Management|Inventory Control; "
        "Procurement|Purchasing; Demand Planning; SAP; Lean Manufacturing|Lean; Six Sigma|Lean Six "
        "Sigma; Vendor Management|Supplier Management; ERP; Warehouse Management|WMS; Forecasting; "
        "Transportation Management|TMS; Excel; Process Improvement",
        (
            "inbound logistics",
            "warehouse operations",
            "supplier contracts",
            "inventory levels",
            "delivery routes",
        ),
        (("manage", "managed"), ("optimise", "optimised"), ("coordinate", "coordinated"), ("run", "ran")),
        weight=1.5,
    ),
    Family(
        "Project Management",
        "operations",
        "Programs",
        ("Project Manager", "Program Manager", "Project Coordinator"),
        ("Construction", "Software & Internet", "Management Consulting", "Government Administration"),
        "Project Management|PM; PMP; Agile; Scrum|Scrum Master; Risk Management; Stakeholder "
        "Management; Budgeting; Microsoft Project|MS Project; JIRA; Resource Planning; Change "
        "Management; Waterfall; Scheduling; Confluence; PRINCE2|Prince2",
        (
            "cross-functional programs",
            "project budgets",
            "delivery timelines",
            "vendor projects",
            "system rollouts",
        ),
        (("deliver", "delivered"), ("coordinate", "coordinated"), ("lead", "led"), ("plan", "planned")),
        weight=1.3,
    ),
    Family(
        "Business Analysis & Consulting",
        "business",
        "Strategy",
        ("Business Analyst", "Management Consultant", "Strategy Analyst"),
        ("Management Consulting", "Financial Services", "Government Administration"),
        "Business Analysis; Requirements Gathering; Process Mapping; Stakeholder Management; Business"
        " Strategy|Strategy; PowerPoint|Microsoft PowerPoint; Excel; Market Research; Data Analysis; "
        "SQL; Change Management; Business Process Modeling|BPMN; Financial Analysis; Problem Solving;"
        " Visio",
        (
            "operating models",
            "business cases",
            "process redesigns",
            "market entry studies",
            "requirements documents",
        ),
        (("develop", "developed"), ("lead", "led"), ("deliver", "delivered"), ("analyse", "analysed")),
        weight=1.2,
    ),
    Family(
        "Nursing",
        "healthcare",
        "Nursing",
        ("Registered Nurse", "Clinical Nurse", "Nurse Practitioner"),
        ("Hospital & Health Care", "Government Administration", "Nonprofit"),
        "Patient Care; Basic Life Support|BLS; ACLS|Advanced Cardiac Life Support; Electronic Health "
        "Records|EHR|EMR; Epic Systems|Epic; Medication Administration; Triage|~Traige; Critical "
        "Care|ICU; Wound Care; Patient Education; IV Therapy|Intravenous Therapy; Vital Signs; "
        "Infection Control; Care Planning; Pediatrics|Paediatrics|~Pediatircs",
        (
            "patient care plans",
            "post-operative recovery",
            "medication rounds",
            "ward admissions",
            "discharge education",
        ),
        (
            ("deliver", "delivered"),
            ("coordinate", "coordinated"),
            ("monitor", "monitored"),
            ("document", "documented"),
        ),
        weight=2.0,
    ),
    Family(
        "Clinical Research & Pharmacy",
        "healthcare",
        "Clinical Operations",
        ("Clinical Research Associate", "Pharmacist", "Clinical Trial Manager"),
        ("Pharmaceuticals", "Hospital & Health Care"),
        "Clinical Trials; Good Clinical Practice|GCP; Regulatory Affairs; FDA Regulations; "
        "Pharmacovigilance|Drug Safety; Clinical Data Management|CDM; Medical Writing; ICH "
        "Guidelines; Pharmacology; Protocol Development; Site Monitoring; CTMS; Drug Development; "
        "Biostatistics; Standard Operating Procedures|SOPs",
        ("phase II trials", "site visits", "regulatory submissions", "safety reports", "study protocols"),
        (("monitor", "monitored"), ("manage", "managed"), ("prepare", "prepared"), ("review", "reviewed")),
    ),
    Family(
        "Physical Therapy",
        "healthcare",
        "Rehabilitation",
        ("Physical Therapist", "Physiotherapist", "Rehabilitation Specialist"),
        ("Hospital & Health Care", "Education"),
        "Rehabilitation|Rehab; Manual Therapy; Orthopedics|Orthopaedics; Patient Assessment; Exercise"
        " Prescription; Sports Medicine; Neurological Rehabilitation|Neuro Rehab; Treatment Planning;"
        " Kinesiology; Electronic Health Records; Pain Management; Gait Analysis; Patient Education; "
        "Geriatrics; Dry Needling",
        (
            "treatment plans",
            "post-surgery rehabilitation",
            "patient assessments",
            "group exercise classes",
            "home exercise programs",
        ),
        (("design", "designed"), ("deliver", "delivered"), ("assess", "assessed"), ("run", "ran")),
        weight=0.8,
    ),
    Family(
        "Teaching & Education",
        "education",
        "Curriculum",
        ("Teacher", "Instructor", "Curriculum Developer"),
        ("Education", "Nonprofit", "Government Administration"),
        "Curriculum Development|Curriculum Design; Lesson Planning; Classroom Management; Special "
        "Education|SPED; Differentiated Instruction; Google Classroom; Educational Technology|EdTech;"
        " Student Assessment; Tutoring; STEM; English as a Second Language|ESL; Instructional Design;"
        " Parent Communication; Learning Management Systems|LMS; Public Speaking",
        (
            "year 9 science classes",
            "lesson plans",
            "after-school programs",
            "student assessments",
            "a new curriculum",
        ),
        (("teach", "taught"), ("plan", "planned"), ("develop", "developed"), ("lead", "led")),
        weight=1.5,
    ),
    Family(
        "Writing & Content",
        "creative",
        "Content",
        ("Content Writer", "Editor", "Journalist"),
        ("Media & Entertainment", "Software & Internet", "Nonprofit"),
        "Copywriting; Editing; Proofreading|~Proof-reading; Content Strategy; SEO; WordPress; "
        "Storytelling; Research; AP Style; Social Media; Content Management Systems|CMS; "
        "Interviewing; Fact-checking|Fact Checking; Blogging; Technical Writing",
        (
            "feature articles",
            "a weekly newsletter",
            "product documentation",
            "the company blog",
            "editorial calendars",
        ),
        (("write", "wrote"), ("edit", "edited"), ("publish", "published"), ("manage", "managed")),
    ),
    Family(
        "Graphic Design & Video",
        "creative",
        "Creative",
        ("Graphic Designer", "Motion Designer", "Video Editor"),
        ("Media & Entertainment", "Retail", "Software & Internet"),
        "Adobe Photoshop|Photoshop|~Photoshp; Adobe Illustrator|Illustrator; Adobe InDesign|InDesign;"
        " After Effects|AE; Premiere Pro|Adobe Premiere; Typography; Branding|Brand Identity; Layout "
        "Design; Motion Graphics; Video Editing; Color Theory|Colour Theory; Print Design; Figma; "
        "Final Cut Pro|FCP; Photography",
        ("brand campaigns", "social videos", "packaging", "print collateral", "explainer animations"),
        (("design", "designed"), ("produce", "produced"), ("edit", "edited"), ("create", "created")),
    ),
    Family(
        "Mechanical Engineering",
        "industrial",
        "Mechanical Engineering",
        ("Mechanical Engineer", "Design Engineer", "Manufacturing Engineer"),
        ("Manufacturing", "Automotive", "Energy & Utilities"),
        "SolidWorks|Solidworks; AutoCAD|~Auto CAD; Computer-Aided Design|CAD; Finite Element "
        "Analysis|FEA; GD&T; MATLAB; Thermodynamics; Product Design; Prototyping; Lean Manufacturing;"
        " 3D Printing|Additive Manufacturing; CNC Machining|CNC; Root Cause Analysis|RCA; ANSYS; Six "
        "Sigma",
        (
            "gearbox assemblies",
            "production tooling",
            "product prototypes",
            "thermal systems",
            "manufacturing lines",
        ),
        (("design", "designed"), ("test", "tested"), ("improve", "improved"), ("validate", "validated")),
        weight=1.2,
    ),
    Family(
        "Electrical & Embedded Engineering",
        "industrial",
        "Hardware Engineering",
        ("Electrical Engineer", "Hardware Engineer", "Embedded Systems Engineer"),
        ("Manufacturing", "Automotive", "Telecommunications", "Energy & Utilities"),
        "Circuit Design; PCB Design|PCB Layout; Embedded C|Embedded Systems; Altium Designer|Altium; "
        "VHDL; Verilog; FPGA; Microcontrollers|MCU; MATLAB; Power Electronics; Digital Signal "
        "Processing|DSP; Oscilloscope; LabVIEW; Firmware; C++|CPP",
        ("motor controllers", "sensor boards", "device firmware", "power supplies", "test rigs"),
        (("design", "designed"), ("bring up", "brought up"), ("debug", "debugged"), ("develop", "developed")),
    ),
    Family(
        "Civil Engineering & Construction",
        "industrial",
        "Construction",
        ("Civil Engineer", "Site Engineer", "Construction Manager"),
        ("Construction", "Energy & Utilities", "Government Administration"),
        "AutoCAD; Civil 3D; Structural Analysis; Construction Management; Revit; Building Information"
        " Modeling|BIM; Project Scheduling; Primavera P6|P6; Cost Estimation|Estimating; Site "
        "Supervision; Surveying; Health and Safety|HSE; Contract Administration; Geotechnical "
        "Engineering; Building Codes",
        (
            "highway projects",
            "residential developments",
            "bridge inspections",
            "site works",
            "drainage designs",
        ),
        (("design", "designed"), ("supervise", "supervised"), ("deliver", "delivered"), ("plan", "planned")),
        weight=1.2,
    ),
    Family(
        "Legal & Compliance",
        "business",
        "Legal",
        ("Paralegal", "Legal Counsel", "Compliance Officer"),
        ("Legal Services", "Financial Services", "Government Administration"),
        "Legal Research; Contract Drafting|Drafting; Litigation; Regulatory Compliance|Compliance; "
        "Corporate Law; Due Diligence; Westlaw; LexisNexis; Intellectual Property|IP; Legal Writing; "
        "E-Discovery|eDiscovery; Negotiation; GDPR|Data Protection; Case Management; Anti-Money "
        "Laundering|AML",
        (
            "commercial contracts",
            "litigation files",
            "compliance reviews",
            "regulatory filings",
            "policy updates",
        ),
        (("draft", "drafted"), ("review", "reviewed"), ("manage", "managed"), ("advise on", "advised on")),
    ),
    Family(
        "Hospitality & Food Service",
        "service",
        "Food and Beverage",
        ("Restaurant Manager", "Front Desk Agent", "Chef"),
        ("Hospitality", "Retail"),
        "Food Safety|HACCP; Customer Service; Menu Planning; Inventory Management; POS Systems|Point "
        "of Sale; Hospitality Management; Event Planning; Guest Relations; Team Leadership; Cost "
        "Control; Scheduling; Culinary Arts|Cooking; Opera PMS; Upselling; Sanitation",
        ("a 120-cover restaurant", "hotel check-in", "banquet events", "the kitchen team", "weekend service"),
        (("run", "ran"), ("manage", "managed"), ("lead", "led"), ("organise", "organised")),
        weight=1.3,
    ),
    Family(
        "Retail",
        "service",
        "Retail Operations",
        ("Store Manager", "Sales Associate", "Merchandiser"),
        ("Retail",),
        "Retail Sales; Visual Merchandising; Inventory Management; Cash Handling; POS Systems; "
        "Customer Service; Loss Prevention; Merchandising; Store Operations; Upselling; Team "
        "Leadership; Scheduling; Product Knowledge; Stock Replenishment|Restocking; KPI Tracking|KPIs",
        ("store operations", "seasonal displays", "a team of associates", "stock counts", "the sales floor"),
        (("run", "ran"), ("manage", "managed"), ("lead", "led"), ("improve", "improved")),
        weight=1.5,
    ),
)

# What members of each family studied, and where.
DEGREE_SUBJECT = {
    "Software Engineering": "Computer Science",
    "Frontend Engineering": "Computer Science",
    "Mobile Development": "Software Engineering",
    "Data Engineering": "Computer Science",
    "Data Science & Analytics": "Statistics",
    "Machine Learning": "Computer Science",
    "DevOps & Cloud": "Information Technology",
    "Cybersecurity": "Cyber Security",
    "Quality Assurance": "Information Systems",
    "IT Support & Administration": "Information Technology",
    "Product Management": "Business Administration",
    "UX & Product Design": "Human-Computer Interaction",
    "Sales": "Business Administration",
    "Marketing": "Marketing",
    "Accounting & Finance": "Accounting",
    "Investment & Banking": "Finance",
    "Human Resources & Recruiting": "Psychology",
    "Customer Success": "Communications",
    "Supply Chain & Operations": "Supply Chain Management",
    "Project Management": "Business Administration",
    "Business Analysis & Consulting": "Economics",
    "Nursing": "Nursing",
    "Clinical Research & Pharmacy": "Pharmacy",
    "Physical Therapy": "Physiotherapy",
    "Teaching & Education": "Education",
    "Writing & Content": "Journalism",
    "Graphic Design & Video": "Graphic Design",
    "Mechanical Engineering": "Mechanical Engineering",
    "Electrical & Embedded Engineering": "Electrical Engineering",
    "Civil Engineering & Construction": "Civil Engineering",
    "Legal & Compliance": "Law",
    "Hospitality & Food Service": "Hospitality Management",
    "Retail": "Business Studies",
}
DEGREES = ("BSc", "MSc", "MBA")  # an MBA names no subject
UNIVERSITIES = (
    "University of London",
    "University of Manchester",
    "Technical University of Munich",
    "Sorbonne University",
    "University of Amsterdam",
    "Trinity College Dublin",
    "Complutense University of Madrid",
    "Indian Institute of Technology Bombay",
    "University of Hyderabad",
    "University of Toronto",
    "University of British Columbia",
    "National University of Singapore",
    "University of Sydney",
    "University of Sao Paulo",
    "University of Washington",
    "University of Texas at Austin",
    "Boston University",
    "University of Chicago",
    "University of California, Los Angeles",
    "Georgia Institute of Technology",
    "University of Colorado Denver",
    "Stanford University",
    "New York University",
    "Humboldt University of Berlin",
)

# Summary openers and closers of a member profile; `{}` is filled with a work object.
SUMMARY_ADJECTIVES = (
    "Experienced",
    "Motivated",
    "Results-driven",
    "Curious",
    "Detail-oriented",
    "Hands-on",
    "Dedicated",
    "Versatile",
)
SUMMARY_CLOSERS = (
    "I enjoy working with cross-functional teams and learning from colleagues.",
    "Looking for my next challenge in a fast-moving team.",
    "I care about quality, clear communication and measurable results.",
    "Outside work I volunteer as a mentor for people starting their careers.",
    "Happy to relocate for the right role.",
    "I like to take ownership of problems end to end.",
)
SKILL_CONNECTORS = (" using ", " with ", ", relying on ", ", drawing on ")
JOB_PERKS = (
    "We offer flexible hours, a learning budget and comprehensive health cover.",
    "Competitive salary, annual bonus and generous parental leave.",
    "Hybrid working, a pension plan and paid volunteering days.",
    "",
)


def parse_skills(spec: str) -> list[tuple[str, list[str], list[str]]]:
    """`"A|a1|~a2; B"` -> [("A", ["a1"], ["a2"]), ("B", [], [])]."""
    out = []
    for item in spec.split(";"):
        forms = [f.strip() for f in item.split("|") if f.strip()]
        if not forms:
            continue
        canonical, rest = forms[0], forms[1:]
        out.append(
            (
                canonical,
                [f for f in rest if not f.startswith("~")],
                [f[1:] for f in rest if f.startswith("~")],
            )
        )
    return out


def typo(name: str) -> str | None:
    """A deterministic, plausible misspelling of `name`: swap, drop or double a letter of its longest word.

    Returns None for names too short to misspell believably (SQL, R, Go).
    """
    words = name.split(" ")
    i = max(range(len(words)), key=lambda k: len(words[k]))
    w = words[i]
    if len(w) < 5 or not w.isalpha():
        return None
    h = zlib.crc32(name.encode())
    pos = 1 + h % (len(w) - 3)  # interior letters only: the first and last letters survive typing
    op = (h >> 8) % 3
    if op == 0 and w[pos] != w[pos + 1]:
        w = w[:pos] + w[pos + 1] + w[pos] + w[pos + 2 :]
    elif op == 1:
        w = w[:pos] + w[pos + 1 :]
    else:
        w = w[:pos] + w[pos] + w[pos:]
    return " ".join(words[:i] + [w] + words[i + 1 :])
